"""Names and imports: which framework a file uses, import aliases, the small
syntactic helpers every pass shares."""
from __future__ import annotations

import ast
import re
from typing import Callable, Iterator, Optional

from gradguard._findings.twins import dotted

_FRAMEWORK_RE = re.compile(r"^[ \t]*(?:import|from)[ \t]+(torch|jax|tensorflow)\b", re.M)
_OPTIMIZER_RE = re.compile(r"(?i)(?:^|_)(?:opt|optim|optimizer|optimiser)(?:s|\d+|_[a-z0-9]+)?$")
_CONVENTIONAL = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional",
                 "np": "numpy", "jnp": "jax.numpy", "jax": "jax", "tf": "tensorflow"}


def frameworks_in(source: str) -> set[str]:
    """Frameworks imported by a file (a cheap regex gate before any analysis)."""
    return set(_FRAMEWORK_RE.findall(source))


def data_owner(expr: ast.AST) -> Optional[ast.AST]:
    """``w`` for ``w.data``, ``w.data[i]``, ``w.data.view(...)``: the tensor written through ``.data``."""
    while True:
        if isinstance(expr, ast.Attribute):
            if expr.attr == "data":
                return expr.value
            expr = expr.value
        elif isinstance(expr, ast.Subscript):
            expr = expr.value
        elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            expr = expr.func.value
        else:
            return None


def collect_aliases(tree: ast.Module) -> dict[str, str]:
    """Module-level import aliases: local name -> qualified module path."""
    aliases: dict[str, str] = {}

    def visit(body: list) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Import):
                for a in stmt.names:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        aliases[top] = top
            elif isinstance(stmt, ast.ImportFrom):
                prefix = "." * (stmt.level or 0) + (stmt.module or "")
                for a in stmt.names:
                    aliases[a.asname or a.name] = f"{prefix}.{a.name}"
            elif isinstance(stmt, (ast.If, ast.Try)):
                visit(stmt.body)
                visit(getattr(stmt, "orelse", []))
                for h in getattr(stmt, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return aliases


def _is_true(node: Optional[ast.AST]) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _decorated_no_grad(fn: ast.AST, qual: Callable[[ast.AST], Optional[str]]) -> bool:
    for dec in getattr(fn, "decorator_list", []):
        target = dec.func if isinstance(dec, ast.Call) else dec
        q = qual(target) or ""
        if q.endswith(("no_grad", "inference_mode")):
            return True
    return False


def _nested_defs(body: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """Function and class definitions directly in a body, looking through blocks."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield stmt
        else:
            for name in ("body", "orelse", "finalbody"):
                sub = getattr(stmt, name, None)
                if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
                    yield from _nested_defs(sub)
            for h in getattr(stmt, "handlers", []) or []:
                yield from _nested_defs(h.body)
            for c in getattr(stmt, "cases", []) or []:
                yield from _nested_defs(c.body)


def _is_autograd_function(cls: Optional[ast.ClassDef], qual: Callable) -> bool:
    if cls is None:
        return False
    for base in cls.bases:
        q = qual(base) or dotted(base) or ""
        if q.endswith("autograd.Function") or q in ("Function", "torch.autograd.function.Function"):
            return True
    return False


_NOGRAD_NAME_RE = re.compile(r"(?:^|_)(?:ids?|mask|masks|idx|indices|index|labels?|positions?|lengths?|lens|"
                             r"counts?|seqlens?|offsets?|grads?)$")  # gradients (`grad`, `d_grad`) do not require grad


def _display(q: str) -> str:
    for long, short in (("torch.nn.functional.", "F."), ("torch.special.", "torch.special.")):
        if q.startswith(long):
            return short + q[len(long):]
    return q


def _walk_statements(body: list) -> Iterator[ast.stmt]:
    """Statements in a body, recursively through blocks but not into nested scopes."""
    stack = list(body)
    while stack:
        stmt = stack.pop()
        yield stmt
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for name in ("body", "orelse", "finalbody"):
            sub = getattr(stmt, name, None)
            if isinstance(sub, list):
                stack.extend(x for x in sub if isinstance(x, ast.stmt))
        for h in getattr(stmt, "handlers", None) or ():
            stack.extend(h.body)


