"""Class facts read before a method is walked: which ``self.<attr>`` are plain
numbers, and which parameters of a private method no call in the class ever passes.

* ``ScalarStores``: attributes every assignment in the class sets to a Python
  scalar -- a constant, ``int(...)``/``float(...)``/``len(...)``, arithmetic or an
  ``if``-expression of those, or a parameter annotated ``int``/``float``/``bool``/``str``
  (or with a number as its default).  ``self.schedule_spread`` read in another method
  is then no tensor, and neither is anything computed only from it and no-grad tensors.
* ``unpassed_none_params(cls)``: for a private method (``_name``, not a dunder) only
  called as ``self._name(...)`` in its class, the parameters defaulting to ``None`` that
  no call passes: an ``if p is not None:`` arm on them never runs (esmfold's
  ``_combine_projections(a, b)`` and its in-place ``_inplace_chunk_size`` branch).
"""
from __future__ import annotations

import ast
from typing import Iterator, Optional

from gradguard.lint.names import _walk_statements

_SCALAR_CALLS = frozenset({"int", "float", "bool", "str", "len", "round", "abs", "min", "max", "sum"})
_SCALAR_ANNOTATION = frozenset({"int", "float", "bool", "str", "Optional[int]", "Optional[float]",
                                "Optional[bool]", "Optional[str]", "int | None", "float | None",
                                "bool | None", "str | None"})


def _methods(cls: ast.ClassDef) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for fn in cls.body:
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield fn


def _defaults(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, ast.expr]:
    """Parameter name -> its default expression."""
    args = fn.args
    positional = [a.arg for a in list(getattr(args, "posonlyargs", [])) + list(args.args)]
    defaults = dict(zip(positional[::-1], list(args.defaults)[::-1]))
    defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
    return defaults


def _scalar_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    defaults = _defaults(fn)
    out = set()
    for a in list(getattr(fn.args, "posonlyargs", [])) + list(fn.args.args) + list(fn.args.kwonlyargs):
        ann = ast.unparse(a.annotation) if a.annotation is not None else ""
        d = defaults.get(a.arg)
        if ann in _SCALAR_ANNOTATION or (not ann and isinstance(d, ast.Constant)
                                         and isinstance(d.value, (int, float)) and not isinstance(d.value, bool)):
            out.add(a.arg)
    return out


def _is_scalar(node: ast.AST, params: set[str]) -> bool:
    if isinstance(node, ast.Constant):
        return not isinstance(node.value, (bytes,))
    if isinstance(node, ast.Name):
        return node.id in params
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in _SCALAR_CALLS
    if isinstance(node, ast.IfExp):
        return _is_scalar(node.body, params) and _is_scalar(node.orelse, params)
    if isinstance(node, ast.BinOp):
        return _is_scalar(node.left, params) and _is_scalar(node.right, params)
    if isinstance(node, ast.UnaryOp):
        return _is_scalar(node.operand, params)
    return False


def _self_attr(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _stored_self_attrs(target: ast.AST) -> Iterator[str]:
    """``self.<attr>`` names a (tuple) target rebinds."""
    if isinstance(target, (ast.Tuple, ast.List)):
        for e in target.elts:
            yield from _stored_self_attrs(e)
    elif isinstance(target, ast.Starred):
        yield from _stored_self_attrs(target.value)
    else:
        name = _self_attr(target)
        if name is not None:
            yield name


class ScalarStores:
    """``self.<attr>`` names that only ever hold Python scalars (see the module doc),
    noted statement by statement (assignment, loop and ``with`` targets) during the one
    walk of the class that ``modules.ModuleScanner`` makes; the caller rules out files
    with ``setattr(self, ...)``."""

    def __init__(self) -> None:
        self.good: set[str] = set()
        self.bad: set[str] = set()
        self._params: Optional[tuple] = None  # (the method, its scalar parameters)

    def note(self, stmt: ast.stmt, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                name = _self_attr(t)
                if name is not None and stmt.value is not None:
                    if self._params is None or self._params[0] is not fn:
                        self._params = (fn, _scalar_params(fn))
                    (self.good if _is_scalar(stmt.value, self._params[1]) else self.bad).add(name)
                elif not isinstance(t, ast.Name):
                    self.bad.update(_stored_self_attrs(t))  # `self.a, self.b = ...`: unknown
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            self.bad.update(_stored_self_attrs(stmt.target))
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                if item.optional_vars is not None:
                    self.bad.update(_stored_self_attrs(item.optional_vars))

    def result(self) -> frozenset[str]:
        return frozenset(self.good - self.bad)


def _may_write(body: list) -> bool:
    """Statement-level: an augmented or item assignment, or a bare ``x.op_(...)`` call."""
    for st in _walk_statements(body):
        if isinstance(st, ast.AugAssign) or (isinstance(st, ast.Assign)
                                             and any(isinstance(t, ast.Subscript) for t in st.targets)):
            return True
        if (isinstance(st, ast.Expr) and isinstance(st.value, ast.Call) and isinstance(st.value.func, ast.Attribute)
                and st.value.func.attr.endswith("_")):
            return True
    return False


def _tests_a_none_param(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A cheap gate: an ``if`` of ``fn`` on a parameter that defaults to None, whose arm
    that would not run writes something in place."""
    nones = frozenset(p for p, d in _defaults(fn).items() if isinstance(d, ast.Constant) and d.value is None)
    if not nones:
        return False
    for st in _walk_statements(fn.body):
        if not isinstance(st, ast.If):
            continue
        arm = dead_arm(st.test, nones)
        if arm is not None and _may_write(st.body if arm == "body" else st.orelse):
            return True
    return False


def unpassed_none_params(cls: ast.ClassDef) -> dict[str, frozenset[str]]:
    """Private method name -> its ``None``-default parameters no call in the class passes."""
    private = {fn.name: fn for fn in _methods(cls) if fn.name.startswith("_") and not fn.name.endswith("__")
               and _tests_a_none_param(fn)}
    if not private:
        return {}
    passed: dict[str, set[str]] = {name: set() for name in private}
    called_only = set(private)
    calls: set[int] = set()
    for node in ast.walk(cls):  # parents come before their children
        if isinstance(node, ast.Call) and _self_attr(node.func) in private:
            name = _self_attr(node.func)
            assert name is not None
            calls.add(id(node.func))
            fn = private[name]
            positional = [a.arg for a in list(getattr(fn.args, "posonlyargs", [])) + list(fn.args.args)][1:]
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                called_only.discard(name)
                continue
            passed[name].update(positional[:len(node.args)])
            passed[name].update(k.arg for k in node.keywords if k.arg is not None)
        elif isinstance(node, ast.Attribute) and id(node) not in calls and _self_attr(node) in private:
            called_only.discard(node.attr)  # used as a value (a callback, getattr): callers unknown
    out: dict[str, frozenset[str]] = {}
    for name in called_only:
        fn = private[name]
        unpassed = {p for p, d in _defaults(fn).items()
                    if isinstance(d, ast.Constant) and d.value is None and p not in passed[name]}
        assigned = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        unpassed -= assigned  # `if p is None: p = ...` rebinds it
        if unpassed:
            out[name] = frozenset(unpassed)
    return out


def dead_arm(test: ast.expr, never_passed: frozenset[str]) -> str | None:
    """Which arm of ``if test:`` cannot run when the names in ``never_passed`` are None:
    "body" for ``p is not None`` / ``p``, "orelse" for ``p is None`` / ``not p``."""
    if isinstance(test, ast.Name) and test.id in never_passed:
        return "body"
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Name) \
            and test.operand.id in never_passed:
        return "orelse"
    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.left, ast.Name)
            and test.left.id in never_passed and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value is None):
        if isinstance(test.ops[0], ast.IsNot):
            return "body"
        if isinstance(test.ops[0], ast.Is):
            return "orelse"
    return None
