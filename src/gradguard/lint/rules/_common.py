"""What the rules share: how a write is named and described, and its out-of-place fix."""
from __future__ import annotations

import ast
from typing import Optional

from gradguard._findings import twins
from gradguard.lint.base import FileContext, Fix
from gradguard.lint.values import Save, Write

_WRITE_KINDS = ("method", "torch_func", "augassign", "inplace_kw", "inplace_module", "call", "out")


_AUG_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
               ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<",
               ast.RShift: ">>", ast.MatMult: "@"}


def _aug_symbol(node: ast.AST) -> str:
    """``+`` for ``x += ...`` (the node of an augassign write is its AugAssign)."""
    assert isinstance(node, ast.AugAssign)
    return _AUG_SYMBOL.get(type(node.op), "?")


def _name(w: Write) -> str:
    if w.target_name:
        return w.target_name
    if w.kind == "data":  # `model.layer.weight.data.mul_()`: name the expression itself
        for node in ast.walk(w.node):
            if isinstance(node, ast.Attribute) and node.attr == "data":
                text = ast.unparse(node.value)
                if len(text) <= 60:
                    return text
                break
    return "the result"


def _describe(w: Write) -> str:
    """`x += ...`, `x.mul_()`, `F.relu(x, inplace=True)` ..."""
    n = _name(w)
    if w.kind == "augassign":
        return f"`{n} {_aug_symbol(w.node)}= ...`"
    if w.kind == "method":
        return f"`{n}.{w.method}()`" if w.target_name else f"`.{w.method}()`"
    if w.kind == "torch_func":
        return f"`{w.method}({n})`"
    if w.kind == "inplace_kw":
        return f"`F.{w.method}({n}, inplace=True)`"
    if w.kind == "inplace_module":
        return f"`{w.op_text}` with inplace={w.ctor.inplace_text if w.ctor is not None else 'True'}"
    if w.kind in ("call", "out"):
        return w.op_text
    return "the write"


def _out_of_place_fix(ctx: FileContext, w: Write) -> tuple[Optional[Fix], str]:
    """The out-of-place rewrite of a write, and a hint for the message."""
    n = _name(w)
    named = w.target_name is not None
    if w.kind == "augassign" and named:
        sym = _aug_symbol(w.node)
        return ctx.fix("augassign", w.node, w.safe(), f"Rewrite as `{n} = {n} {sym} ...`"), f"use `{n} = {n} {sym} ...`"
    if w.kind == "method":
        twin = twins.twin_method(w.method or "")
        if twin is None:
            return _fresh_buffer_fix(ctx, w)
        if w.stmt_level and named:
            return (ctx.fix("out_of_place_method", w.node, w.safe(), f"Rewrite as `{n} = {n}.{twin}(...)`"),
                    f"use `{n} = {n}.{twin}(...)`")
        if not named and w.target.temp:
            return ctx.fix("drop_underscore", w.node, True, f"Use `.{twin}()`"), f"use `.{twin}()`"
        return None, f"use the out-of-place `.{twin}()`"
    if w.kind == "torch_func":
        twin = twins.twin_function(w.method or "")
        if twin is None:
            return None, "write to a clone instead"
        short = twin.replace("torch.nn.functional.", "F.")
        if w.stmt_level and named:
            fix = ctx.fix("out_of_place_func", w.node, w.safe(), f"Rewrite as `{n} = {short}({n})`")
            return fix, f"use `{n} = {short}({n})`"
        if w.target.temp:
            return ctx.fix("drop_underscore", w.node, True, f"Use `{short}`"), f"use `{short}(...)`"
        return None, f"use `{short}(...)`"
    if w.kind == "inplace_kw":
        if w.stmt_level and named:
            return (ctx.fix("drop_inplace_assign", w.node, w.safe(), f"Rewrite as `{n} = F.{w.method}({n})`"),
                    f"use `{n} = F.{w.method}({n})`")
        return ctx.fix("drop_inplace", w.node, w.safe(), "Remove `inplace=True`"), "drop `inplace=True`"
    if w.kind == "call":
        return None, f"pass a clone (`{n}.clone()`) or make `{w.method}` compute out of place"
    if w.kind == "out":
        return _out_fix(ctx, w)
    if w.kind == "inplace_module" and w.ctor is not None:
        attr = w.op_text.split(" ")[0].split(".")[-1]
        # Dropping inplace=True at the constructor is invisible to callers that use
        # the module's return value; a bare `self.act(x)` statement relies on the side effect.
        safe = attr not in ctx.facts.stmt_call_attrs
        return (ctx.fix("drop_inplace", w.ctor.node, safe, f"Construct `nn.{w.ctor.cls}()` without inplace=True"),
                f"construct `nn.{w.ctor.cls}()` without inplace=True (line {w.ctor.node.lineno})")
    return None, "use an out-of-place operation"


def _first(saves: tuple[Save, ...], output: Optional[bool]) -> Optional[Save]:
    for s in saves:
        if output is None or s.output == output:
            return s
    return None


def _data_fix(ctx: FileContext, w: Write, safe: bool) -> Optional[Fix]:
    if w.data_form == "method" and not w.stmt_level:
        return None
    node = w.stmt
    if not isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign)):
        return None
    if isinstance(node, ast.Assign) and len(node.targets) != 1:
        return None
    return ctx.fix("no_grad", node, safe and w.data_form != "assign",
                   "Write under `torch.no_grad()` instead of `.data`")


def torch_name(ctx: FileContext) -> str:
    """What the file binds ``torch`` to at top level (``import torch as th`` -> ``th``)."""
    for stmt in ctx.tree.body:
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                if a.name == "torch":
                    return a.asname or "torch"
    return "torch"


def _fresh_buffer_fix(ctx: FileContext, w: Write) -> tuple[Optional[Fix], str]:
    """``x.zero_()`` -> ``x = torch.zeros_like(x)`` and the other fresh-buffer twins.

    Always unsafe: the fresh tensor does not require grad where ``x`` did, so a
    backward whose only path runs through it would raise (see ``_findings.twins``)."""
    n = _name(w)
    text = ctx.segment(w.stmt) if w.stmt_level and w.target_name and isinstance(w.stmt, ast.Expr) else None
    twin = twins.twin_statement(text, torch_name=torch_name(ctx)) if text else None
    if twin is None:
        if w.method in twins.FRESH_BUFFER:
            return None, f"write into a fresh tensor (`torch.empty_like({n}).{w.method}(...)`) or a clone"
        return None, "write to a clone (`.clone()`) instead"
    return ctx.fix("twin", w.stmt, False, f"Rewrite as `{twin}`", twin), f"use `{twin}`"


def _out_fix(ctx: FileContext, w: Write) -> tuple[Optional[Fix], str]:
    """``torch.clamp(a, 0, 1, out=a)`` -> ``a = torch.clamp(a, 0, 1)`` (from ``_findings.twins``)."""
    text = ctx.segment(w.stmt) if w.stmt_level and isinstance(w.stmt, ast.Expr) else None
    twin = twins.twin_statement(text, "(out=)") if text else None
    if twin is None:
        return None, "drop `out=` and assign the result to a new tensor"
    return ctx.fix("twin", w.stmt, w.safe(), f"Rewrite as `{twin}`", twin), f"use `{twin}`"
