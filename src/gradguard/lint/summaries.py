"""Function summaries: what each function of the file does to its arguments, and
which functions only ever run under ``torch.no_grad()``.

* ``FunctionIndex`` names the file's top-level functions, the methods of its
  classes and the ``autograd.Function`` subclasses.
* ``no_grad_only(index)``: functions all of whose uses in the file run with grad
  disabled -- called only inside ``with torch.no_grad():``, from a
  ``@torch.no_grad()`` function, or from another such function (a fixpoint).  An
  optimizer's ``@torch.no_grad() step`` calling ``_single_tensor_adam(...)`` makes
  the helper's in-place updates touch nothing a graph saved.  A function used in
  any other way (a call with grad on, passed as a value) is not one.
* ``FunctionSummary``: for each parameter, whether the function writes it in place
  (without rebinding it first) and whether an op in it saves it for backward --
  applied at call sites (``clipped = cut(pred, -0.5, 0.5)``, ``self.norm_(x)``).
* ``FunctionClassSummary``: which ``forward`` parameters an ``autograd.Function``
  keeps for backward (``ctx.save_for_backward(x, ...)`` or ``ctx.x = x``), applied
  at ``MyFn.apply(...)``.

Summaries are computed on demand by the analyzer (one extra walk of each called
function, memoised, recursion cut); this module only holds and matches them.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Callable, Optional

from gradguard.lint.names import _decorated_no_grad, _is_autograd_function


@dataclass
class FunctionSummary:
    params: list  # positional parameter names (``self`` dropped for methods)
    kwonly: list
    written: dict = field(default_factory=dict)  # param -> line of the in-place write
    saved: dict = field(default_factory=dict)  # param -> (op, line)
    returns_nograd: bool = False  # every `return` gives a value that cannot require grad

    def bind(self, call: ast.Call) -> dict:
        """Parameter name -> the argument expression index in ``call`` ("pos", i) / ("kw", name)."""
        out: dict = {}
        for i, a in enumerate(call.args):
            if isinstance(a, ast.Starred):
                break
            if i < len(self.params):
                out[self.params[i]] = ("pos", i)
        for k in call.keywords:
            if k.arg is not None and (k.arg in self.params or k.arg in self.kwonly):
                out[k.arg] = ("kw", k.arg)
        return out


@dataclass
class FunctionClassSummary:
    name: str
    saved: dict = field(default_factory=dict)  # forward param index (after ctx) -> how ("save_for_backward" | "ctx.x")
    line: int = 0


class FunctionIndex:
    """The functions of one file by the names calls use."""

    def __init__(self, tree: ast.Module, qual: Callable) -> None:
        self.functions: dict = {}  # name -> FunctionDef (top level)
        self.methods: dict = {}  # (class name, method) -> (FunctionDef, ClassDef)
        self.classes: dict = {}  # name -> ClassDef (top level)
        self.autograd: dict = {}  # name -> FunctionClassSummary
        self.value_used: set = set()  # ids of functions also used as values (filled by no_grad_only)
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[stmt.name] = stmt
            elif isinstance(stmt, ast.ClassDef):
                self.classes[stmt.name] = stmt
                for sub in stmt.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.methods[(stmt.name, sub.name)] = (sub, stmt)
                if _is_autograd_function(stmt, qual):
                    fwd = self.methods.get((stmt.name, "forward"))
                    if fwd is not None:
                        self.autograd[stmt.name] = _autograd_summary(stmt.name, fwd[0])


def _autograd_summary(name: str, fwd: ast.FunctionDef) -> FunctionClassSummary:
    """Which ``forward(ctx, ...)`` parameters the Function keeps for backward."""
    args = [a.arg for a in list(getattr(fwd.args, "posonlyargs", [])) + list(fwd.args.args)]
    if not args:
        return FunctionClassSummary(name, line=fwd.lineno)
    ctx, params = args[0], args[1:]
    index = {p: i for i, p in enumerate(params)}
    out = FunctionClassSummary(name, line=fwd.lineno)
    for node in ast.walk(fwd):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "save_for_backward" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == ctx):
            for a in node.args:
                a = a.value if isinstance(a, ast.Starred) else a
                if isinstance(a, ast.Name) and a.id in index:
                    out.saved[index[a.id]] = "save_for_backward"
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == ctx
                        and isinstance(node.value, ast.Name) and node.value.id in index):
                    out.saved[index[node.value.id]] = f"{ctx}.{t.attr}"
    return out


def _is_no_grad_with(item: ast.withitem, qual: Callable) -> bool:
    ce = item.context_expr
    q = qual(ce.func if isinstance(ce, ast.Call) else ce) or ""
    if q.endswith(("no_grad", "inference_mode")):
        return True
    return (q.endswith("set_grad_enabled") and isinstance(ce, ast.Call) and bool(ce.args)
            and isinstance(ce.args[0], ast.Constant) and ce.args[0].value is False)


_LEAVES = (ast.Constant, ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.alias,
           ast.Import, ast.ImportFrom, ast.Pass, ast.Break, ast.Continue, ast.Global, ast.Nonlocal)


def no_grad_only(index: FunctionIndex, tree: ast.Module, qual: Callable) -> set:
    """ids of the FunctionDefs that only ever run with grad disabled (see the module doc)."""
    defs: dict = {}  # id -> FunctionDef
    for fn in index.functions.values():
        defs[id(fn)] = fn
    for fn, _cls in index.methods.values():
        defs[id(fn)] = fn
    sites: dict = {k: [] for k in defs}  # callee id -> [(caller id or None, under no_grad)]
    value_used = index.value_used

    def resolve(node: ast.AST, cls: Optional[ast.ClassDef]) -> Optional[int]:
        if isinstance(node, ast.Name) and node.id in index.functions:
            return id(index.functions[node.id])
        if (cls is not None and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls") and (cls.name, node.attr) in index.methods):
            return id(index.methods[(cls.name, node.attr)][0])
        return None

    def visit(node: ast.AST, caller: Optional[int], cls: Optional[ast.ClassDef], ng: bool) -> None:
        if isinstance(node, _LEAVES):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and id(node) != caller:
            # a nested def runs whenever it is called: its uses count as with grad on
            for child in ast.iter_child_nodes(node):
                visit(child, None, cls, False)
            return
        if isinstance(node, ast.ClassDef):
            for child in node.body:
                visit(child, None, node, False)
            return
        if isinstance(node, (ast.With, ast.AsyncWith)):
            inner = ng or any(_is_no_grad_with(i, qual) for i in node.items)
            for i in node.items:
                visit(i, caller, cls, ng)
            for s in node.body:
                visit(s, caller, cls, inner)
            return
        if isinstance(node, ast.Call):
            callee = resolve(node.func, cls)
            if callee is not None:
                sites[callee].append((caller, ng))
                if isinstance(node.func, ast.Attribute):
                    visit(node.func.value, caller, cls, ng)
                for child in list(node.args) + [k.value for k in node.keywords]:
                    visit(child, caller, cls, ng)
                return
        if isinstance(node, (ast.Name, ast.Attribute)):
            target = resolve(node, cls)
            if target is not None:
                # used as a value (`func = _single_tensor_adam if ... else ...; func(...)`):
                # assume it is called where it is referenced
                sites[target].append((caller, ng))
                value_used.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child, caller, cls, ng)

    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in stmt.decorator_list:
                visit(dec, None, None, False)
            for s in stmt.body:
                visit(s, id(stmt), None, False)
        elif isinstance(stmt, ast.ClassDef):
            for sub in stmt.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for s in sub.body:
                        visit(s, id(sub), stmt, False)
                else:
                    visit(sub, None, stmt, False)
        else:
            visit(stmt, None, None, False)

    # `@torch.no_grad()` functions, and those named for inference (`_inference_forward`,
    # `inference_step`): paths a library only takes with grad disabled
    only = {k for k, fn in defs.items() if _decorated_no_grad(fn, qual) or "inference" in fn.name.lower()}
    changed = True
    while changed:
        changed = False
        for k, uses in sites.items():
            if k in only or not uses:
                continue
            if all(ng or (caller is not None and caller in only) for caller, ng in uses):
                only.add(k)
                changed = True
    return only


__all__ = ["FunctionSummary", "FunctionClassSummary", "FunctionIndex", "no_grad_only"]
