"""Apply fixes with libcst, keeping formatting and comments.

A fix names a node by its source span (``base.Fix``); the transformer below finds
that node in the concrete syntax tree and rewrites it.  libcst is imported only
here, so linting without ``--fix`` never pays for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union, cast

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from gradguard._findings.twins import FUNCTIONAL_INPLACE_ARG, MODULE_INPLACE_ARG, twin_method
from gradguard.lint.base import Fix

FIX_KINDS = ("augassign", "out_of_place_method", "out_of_place_func", "drop_underscore", "drop_inplace",
             "drop_inplace_assign", "clone_before", "no_grad", "jax_at", "twin")

_JAX_AUG = {"AddAssign": "add", "SubtractAssign": "add", "MultiplyAssign": "multiply", "DivideAssign": "divide",
            "PowerAssign": "power"}
_DATA_AUG = {"AddAssign": "add_", "SubtractAssign": "sub_", "MultiplyAssign": "mul_", "DivideAssign": "div_"}
# Where `inplace` sits positionally: the one table in gradguard._findings.twins.
_INPLACE_POSITION = {**FUNCTIONAL_INPLACE_ARG, **MODULE_INPLACE_ARG}


@dataclass
class FixOutcome:
    source: str
    applied: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (Fix, reason)


def _needs_parens(node: cst.BaseExpression) -> bool:
    if getattr(node, "lpar", None):
        return False
    if isinstance(node, cst.UnaryOperation):
        return isinstance(node.operator, cst.Not)
    return isinstance(node, (cst.BinaryOperation, cst.BooleanOperation, cst.Comparison, cst.IfExp, cst.Lambda,
                             cst.NamedExpr))


def _paren(node: cst.BaseExpression) -> cst.BaseExpression:
    if _needs_parens(node):
        return node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return node


def _assign_target(expr: cst.BaseExpression) -> cst.AssignTarget:
    """``expr = ...``: the written tensor's expression (a name, attribute or subscript) as a target."""
    return cst.AssignTarget(cast(cst.BaseAssignTargetExpression, expr))


def _strip_inplace(call: cst.Call) -> Optional[cst.Call]:
    """``call`` without its ``inplace=True`` (keyword, or positional True); None if absent."""
    args = list(call.args)
    drop = None
    for i, a in enumerate(args):
        if a.keyword is not None and a.keyword.value == "inplace":
            drop = i
    if drop is None:
        name = call.func.attr.value if isinstance(call.func, cst.Attribute) else (
            call.func.value if isinstance(call.func, cst.Name) else "")
        pos = _INPLACE_POSITION.get(name)
        positional = [i for i, a in enumerate(args) if a.keyword is None and a.star == ""]
        if pos is not None and len(positional) > pos:
            i = positional[pos]
            value = args[i].value
            if isinstance(value, cst.Name) and value.value == "True" and i == len(args) - 1:
                drop = i
    if drop is None:
        return None
    removed = args.pop(drop)
    if args and drop == len(args):
        # keep a trailing comma only if the removed (last) argument had one
        comma = (removed.comma if isinstance(removed.comma, cst.Comma) and _has_newline(removed.comma)
                 else cst.MaybeSentinel.DEFAULT)
        args[-1] = args[-1].with_changes(comma=comma)
    return call.with_changes(args=args)


def _has_newline(comma: cst.Comma) -> bool:
    return "\n" in cst.Module([]).code_for_node(comma)


def _drop_data(expr: cst.BaseExpression) -> Optional[cst.BaseExpression]:
    """``expr`` with the first ``.data`` on its receiver chain removed
    (``w.data`` -> ``w``, ``w.data[:2]`` -> ``w[:2]``); None if there is none."""
    if isinstance(expr, cst.Attribute):
        if expr.attr.value == "data":
            return expr.value
        inner = _drop_data(expr.value)
        return None if inner is None else expr.with_changes(value=inner)
    if isinstance(expr, cst.Subscript):
        inner = _drop_data(expr.value)
        return None if inner is None else expr.with_changes(value=inner)
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute):
        inner = _drop_data(expr.func.value)
        return None if inner is None else expr.with_changes(func=expr.func.with_changes(value=inner))
    return None


class _FixTransformer(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, fixes: Sequence[Fix], torch_name: str) -> None:
        super().__init__()
        self.by_start: dict[tuple, list] = {}
        for f in fixes:
            self.by_start.setdefault((f.line, f.col), []).append(f)
        self.applied: set = set()
        self.failed: dict = {}
        self.torch_name = torch_name
        self.no_grad_stack: list = [False]
        self.created_withs: set = set()
        self.used_torch = False

    # -- lookup ---------------------------------------------------------
    def _take(self, node: cst.CSTNode, kinds: tuple, exact_end: bool = True) -> Optional[Fix]:
        pos = self.get_metadata(PositionProvider, node)
        for f in self.by_start.get((pos.start.line, pos.start.column), ()):
            if f.kind in kinds and f not in self.applied and f not in self.failed:
                if exact_end and (f.end_line, f.end_col) != (pos.end.line, pos.end.column):
                    continue
                return f
        return None

    # -- no_grad context ------------------------------------------------
    def _is_no_grad(self, expr: cst.BaseExpression) -> bool:
        target = expr.func if isinstance(expr, cst.Call) else expr
        code = cst.Module([]).code_for_node(target)
        return code.endswith(("no_grad", "inference_mode"))

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.no_grad_stack.append(any(self._is_no_grad(d.decorator) for d in node.decorators))

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        self.no_grad_stack.pop()
        return updated

    def visit_With(self, node: cst.With) -> None:
        self.no_grad_stack.append(self.no_grad_stack[-1] or any(self._is_no_grad(i.item) for i in node.items))

    def leave_With(self, original: cst.With, updated: cst.With) -> cst.With:
        self.no_grad_stack.pop()
        return updated

    # -- expression-level fixes -----------------------------------------
    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        f = self._take(original, ("drop_underscore",))
        if f is not None:
            func = updated.func
            twin = twin_method(func.attr.value) if isinstance(func, cst.Attribute) else None
            if twin is not None:
                self.applied.add(f)
                return updated.with_changes(func=func.with_changes(attr=cst.Name(twin)))
            self.failed[f] = "not an in-place call with an out-of-place twin"
            return updated
        f = self._take(original, ("drop_inplace",))
        if f is not None:
            new = _strip_inplace(updated)
            if new is None:
                self.failed[f] = "no inplace=True argument found"
                return updated
            self.applied.add(f)
            return new
        return updated

    # -- statement-level fixes ------------------------------------------
    def leave_Expr(self, original: cst.Expr, updated: cst.Expr) -> cst.BaseSmallStatement:
        call = updated.value
        if not isinstance(call, cst.Call):
            return updated
        f = self._take(original.value, ("out_of_place_method",))
        twin = twin_method(call.func.attr.value) if f is not None and isinstance(call.func, cst.Attribute) else None
        if f is not None and twin is not None and isinstance(call.func, cst.Attribute):  # twin: an attribute
            self.applied.add(f)
            func = call.func
            target = func.value.deep_clone()
            value = call.with_changes(func=func.with_changes(attr=cst.Name(twin)))
            return cst.Assign(targets=[_assign_target(target)], value=value, semicolon=updated.semicolon)
        f = self._take(original.value, ("out_of_place_func", "drop_inplace_assign"))
        if f is not None and call.args:
            target = call.args[0].value.deep_clone()
            if f.kind == "out_of_place_func":
                callee = call.func
                if isinstance(callee, cst.Attribute) and callee.attr.value.endswith("_"):
                    value = call.with_changes(func=callee.with_changes(attr=cst.Name(callee.attr.value[:-1])))
                else:
                    self.failed[f] = "not an in-place function"
                    return updated
            else:
                value = _strip_inplace(call) or call
            self.applied.add(f)
            return cst.Assign(targets=[_assign_target(target)], value=value, semicolon=updated.semicolon)
        return updated

    def leave_AugAssign(self, original: cst.AugAssign, updated: cst.AugAssign) -> cst.BaseSmallStatement:
        f = self._take(original, ("augassign",), exact_end=False)
        if f is None:
            return updated
        if isinstance(updated.target, cst.Subscript):
            self.failed[f] = "augmented assignment to an item"
            return updated
        op_name = type(updated.operator).__name__
        bin_cls = getattr(cst, op_name[: -len("Assign")], None)
        if bin_cls is None:
            self.failed[f] = f"unknown operator {op_name}"
            return updated
        self.applied.add(f)
        target = updated.target
        return cst.Assign(
            targets=[cst.AssignTarget(target)],
            value=cst.BinaryOperation(left=target.deep_clone(), operator=bin_cls(), right=_paren(updated.value)),
            semicolon=updated.semicolon,
        )

    def leave_SimpleStatementLine(
        self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
    ) -> Union[cst.BaseStatement, cst.FlattenSentinel]:
        if len(original.body) != 1:
            for small in original.body:
                for kind in ("clone_before", "no_grad", "jax_at", "twin"):
                    f = self._take(small, (kind,), exact_end=False)
                    if f is not None:
                        self.failed[f] = "several statements on one line"
            return updated
        small_orig, small = original.body[0], updated.body[0]
        f = self._take(small_orig, ("clone_before",), exact_end=False)
        if f is not None:
            return self._clone_before(f, updated, small)
        f = self._take(small_orig, ("jax_at",), exact_end=False)
        if f is not None:
            return self._jax_at(f, updated, small)
        f = self._take(small_orig, ("no_grad",), exact_end=False)
        if f is not None:
            return self._no_grad(f, updated, small)
        f = self._take(small_orig, ("twin",), exact_end=False)
        if f is not None:
            return self._twin(f, updated, small)
        return updated

    def _twin(self, f: Fix, line: cst.SimpleStatementLine, small: cst.BaseSmallStatement):
        """Replace the statement by its out-of-place twin (text from ``_findings.twins``),
        keeping the line's comments, blank lines and semicolon."""
        try:
            new = cst.parse_statement(f.replacement)
        except cst.ParserSyntaxError:
            self.failed[f] = "the twin statement does not parse"
            return line
        if not isinstance(new, cst.SimpleStatementLine) or len(new.body) != 1:
            self.failed[f] = "the twin is not one simple statement"
            return line
        if self.torch_name + "." in f.replacement:
            self.used_torch = True
        self.applied.add(f)
        return line.with_changes(body=[new.body[0].with_changes(semicolon=small.semicolon)])

    def _clone_before(self, f: Fix, line: cst.SimpleStatementLine, small: cst.BaseSmallStatement):
        target = small.targets[0].target if isinstance(small, cst.Assign) and len(small.targets) == 1 else (
            small.target if isinstance(small, cst.AugAssign) else None)
        if not isinstance(target, cst.Subscript):
            self.failed[f] = "not an item assignment"
            return line
        base = target.value
        clone = cst.SimpleStatementLine(
            body=[cst.Assign(targets=[_assign_target(base.deep_clone())],
                             value=cst.Call(func=cst.Attribute(value=base.deep_clone(), attr=cst.Name("clone"))))],
            leading_lines=line.leading_lines,
        )
        self.applied.add(f)
        return cst.FlattenSentinel([clone, line.with_changes(leading_lines=[])])

    def _jax_at(self, f: Fix, line: cst.SimpleStatementLine, small: cst.BaseSmallStatement):
        method: Optional[str]
        if (isinstance(small, cst.Assign) and len(small.targets) == 1
                and isinstance(small.targets[0].target, cst.Subscript)):
            sub, method, value = small.targets[0].target, "set", small.value
        elif isinstance(small, cst.AugAssign) and isinstance(small.target, cst.Subscript):
            sub, value = small.target, small.value
            method = _JAX_AUG.get(type(small.operator).__name__)
            if method is None:
                self.failed[f] = "no .at[] equivalent for this operator"
                return line
            if isinstance(small.operator, cst.SubtractAssign):
                value = cst.UnaryOperation(operator=cst.Minus(), expression=_paren(value) if not isinstance(
                    value, (cst.Name, cst.Integer, cst.Float, cst.Call, cst.Attribute, cst.Subscript)) else value)
        else:
            self.failed[f] = "not an item assignment"
            return line
        base = sub.value
        at = cst.Subscript(value=cst.Attribute(value=base.deep_clone(), attr=cst.Name("at")), slice=sub.slice)
        new = cst.Assign(targets=[_assign_target(base.deep_clone())],
                         value=cst.Call(func=cst.Attribute(value=at, attr=cst.Name(method)), args=[cst.Arg(value)]),
                         semicolon=small.semicolon)
        self.applied.add(f)
        return line.with_changes(body=[new])

    def _no_grad(self, f: Fix, line: cst.SimpleStatementLine, small: cst.BaseSmallStatement):
        new: Optional[cst.BaseSmallStatement] = None
        if (isinstance(small, cst.Expr) and isinstance(small.value, cst.Call)
                and isinstance(small.value.func, cst.Attribute)):
            func = small.value.func
            owner = _drop_data(func.value)
            if owner is not None:
                new = small.with_changes(value=small.value.with_changes(func=func.with_changes(value=owner)))
        elif isinstance(small, cst.Assign) and len(small.targets) == 1:
            t = small.targets[0].target
            owner = t.value if isinstance(t, cst.Attribute) and t.attr.value == "data" else None
            if owner is not None:  # w.data = v  ->  w.copy_(v)
                new = cst.Expr(cst.Call(func=cst.Attribute(value=owner, attr=cst.Name("copy_")),
                                        args=[cst.Arg(small.value)]), semicolon=small.semicolon)
            elif isinstance(t, cst.Subscript) and _drop_data(t.value) is not None:
                new = small.with_changes(targets=[small.targets[0].with_changes(
                    target=t.with_changes(value=_drop_data(t.value)))])
        elif isinstance(small, cst.AugAssign):
            t = small.target
            owner = t.value if isinstance(t, cst.Attribute) and t.attr.value == "data" else None
            if owner is not None:
                method = _DATA_AUG.get(type(small.operator).__name__)
                if method is not None:
                    new = cst.Expr(cst.Call(func=cst.Attribute(value=owner, attr=cst.Name(method)),
                                            args=[cst.Arg(small.value)]), semicolon=small.semicolon)
                else:
                    new = small.with_changes(target=owner)
            elif isinstance(t, cst.Subscript) and _drop_data(t.value) is not None:
                new = small.with_changes(target=t.with_changes(value=_drop_data(t.value)))
        if new is None:
            self.failed[f] = "no write through .data found"
            return line
        self.applied.add(f)
        inner = line.with_changes(body=[new])
        if self.no_grad_stack[-1]:
            return inner  # already under no_grad: dropping .data is enough
        self.used_torch = True
        with_node = cst.With(
            items=[cst.WithItem(cst.Call(func=cst.Attribute(value=cst.Name(self.torch_name),
                                                            attr=cst.Name("no_grad"))))],
            body=cst.IndentedBlock(body=[inner.with_changes(leading_lines=[])]),
            leading_lines=line.leading_lines,
        )
        self.created_withs.add(id(with_node))
        return with_node

    # -- merge adjacent `with torch.no_grad():` blocks we created ------------
    def _merge(self, body: Sequence[cst.BaseStatement]) -> list:
        out: list = []
        for stmt in body:
            prev = out[-1] if out else None
            # only `with` statements are in created_withs
            if (isinstance(prev, cst.With) and isinstance(stmt, cst.With) and id(stmt) in self.created_withs
                    and id(prev) in self.created_withs and not stmt.leading_lines):
                merged = prev.with_changes(
                    body=prev.body.with_changes(body=list(prev.body.body) + list(stmt.body.body)))
                self.created_withs.add(id(merged))
                out[-1] = merged
            else:
                out.append(stmt)
        return out

    def leave_IndentedBlock(self, original: cst.IndentedBlock, updated: cst.IndentedBlock) -> cst.IndentedBlock:
        if self.created_withs:
            return updated.with_changes(body=self._merge(updated.body))
        return updated

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        if self.created_withs:
            return updated.with_changes(body=self._merge(updated.body))
        return updated


def _torch_binding(module: cst.Module) -> Optional[str]:
    """The name the module binds ``torch`` to at top level (``import torch [as th]``)."""
    for stmt in module.body:
        if isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                if isinstance(small, cst.Import):
                    for alias in small.names:
                        name = cst.Module([]).code_for_node(alias.name)
                        if name == "torch" and alias.asname is not None:
                            return cst.Module([]).code_for_node(alias.asname.name)
                        if name == "torch" or (name.startswith("torch.") and alias.asname is None):
                            return "torch"
    return None


def _add_import_torch(module: cst.Module) -> cst.Module:
    """Insert ``import torch`` after the docstring, ``__future__`` imports and other imports."""
    body = list(module.body)
    insert_at = 0
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and all(
                isinstance(s, (cst.Import, cst.ImportFrom))
                or (i == 0 and isinstance(s, cst.Expr)
                    and isinstance(s.value, (cst.SimpleString, cst.ConcatenatedString)))
                for s in stmt.body):
            insert_at = i + 1
        else:
            break
    body.insert(insert_at, cst.SimpleStatementLine(body=[cst.Import(names=[cst.ImportAlias(cst.Name("torch"))])]))
    return module.with_changes(body=body)


def apply_fixes(source: str, fixes: Sequence[Fix]) -> FixOutcome:
    """Rewrite ``source`` applying ``fixes``; fixes whose node is not found are reported as failed."""
    if not fixes:
        return FixOutcome(source)
    unique = list(dict.fromkeys(fixes))
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:  # syntax newer than this libcst understands
        reason = f"libcst cannot parse this file: {str(exc).splitlines()[0]}"
        return FixOutcome(source, [], [(f, reason) for f in unique])
    torch_name = _torch_binding(module)
    transformer = _FixTransformer(unique, torch_name or "torch")
    new_module = MetadataWrapper(module).visit(transformer)
    if transformer.used_torch and torch_name is None:
        new_module = _add_import_torch(new_module)
    failed = [(f, transformer.failed.get(f, "the code at this position is not a fixable write"))
              for f in unique if f not in transformer.applied]
    return FixOutcome(new_module.code, [f for f in unique if f in transformer.applied], failed)


@dataclass
class SourceFix:
    """The result of fixing one file's text."""

    source: str
    fixed: list = field(default_factory=list)  # diagnostics whose fix was applied
    failed: list = field(default_factory=list)  # (diagnostic, reason)


def fix_source(source: str, path: str, select: Sequence[str], unsafe: bool = False, max_passes: int = 10) -> SourceFix:
    """Lint and fix until nothing fixable is left (a fix can make another moot)."""
    from gradguard.lint.engine import lint_source

    result = SourceFix(source)
    attempted: set = set()
    for _ in range(max_passes):
        diags = lint_source(result.source, path, select)
        todo = [d for d in diags if d.fix is not None and (d.fix.safe or unsafe)
                and (d.code, d.fix) not in attempted]
        if not todo:
            break
        outcome = apply_fixes(result.source, [d.fix for d in todo if d.fix is not None])
        applied = set(outcome.applied)
        reasons = dict(outcome.failed)
        for d in todo:
            attempted.add((d.code, d.fix))
            if d.fix in applied:
                result.fixed.append(d)
            else:
                result.failed.append((d, reasons.get(d.fix, "could not apply")))
        if not applied:
            break
        result.source = outcome.source
    return result
