"""``gradguard fix --from-report``: fix exactly the write sites a runtime report found.

Report schema (version 1, written by ``gradguard run``)::

    {"version": 1,
     "conflicts": [{"kind", "code", "mutation": {"op", "file", "line", "function", "stack"},
                    "saved": {...}, "tensor": {...}, "overlap", "fix"}],
     "summary": {...}}

For every conflict the statement at ``mutation.file:mutation.line`` is rewritten
with whatever out-of-place form applies there -- the runtime already proved the
write conflicts, so the lint rules are not consulted.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Optional

from gradguard._findings import twins
from gradguard._findings.schema import read_report
from gradguard._findings.twins import dotted
from gradguard.errors import UsageError
from gradguard.lint import tables as T
from gradguard.lint.base import FileContext
from gradguard.lint.rules._common import torch_name

# Writing under no_grad on the tensor itself bumps its version counter: a silently
# wrong program becomes one that raises at backward.  Never applied without --unsafe-fixes.
_NO_GRAD_TITLE = "Write under torch.no_grad() (unsafe: backward then raises; move the write after backward)"


def load_report(path: str) -> list[tuple[str, int, str]]:
    """(file, line, op) for each conflict, in report order, without duplicates. The report
    is read by the schema's one reader (`gradguard._findings.schema.read_report`)."""
    report = read_report(path)
    sites: list[tuple[str, int, str]] = []  # (file, line, op)
    for i, conflict in enumerate(report.conflicts):
        site = conflict.write.site if conflict.write else None
        if site is None or not site.file or not site.line:
            raise UsageError(f"report {path}: conflict #{i} has no mutation.file/mutation.line")
        if (site.file, site.line) not in [s[:2] for s in sites]:
            sites.append((site.file, site.line, conflict.write.op if conflict.write else ""))
    return sites


def _innermost_statement(tree: ast.Module, line: int) -> Optional[ast.stmt]:
    best = None
    body: Optional[list[ast.stmt]] = tree.body
    while body:
        nxt: Optional[list[ast.stmt]] = None
        for stmt in body:
            if stmt.lineno <= line <= (stmt.end_lineno or stmt.lineno):
                best = stmt
                subs = [getattr(stmt, n, None) for n in ("body", "orelse", "finalbody")]
                subs += [h.body for h in getattr(stmt, "handlers", [])]
                for sub in subs:
                    if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt) and any(
                            s.lineno <= line <= (s.end_lineno or s.lineno) for s in sub):
                        nxt = sub
                break
        body = nxt
    return best


def _params_and_globals(tree: ast.Module, stmt: ast.stmt) -> set:
    """Names that are arguments of (or global in) the function containing ``stmt``."""
    names: set = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.lineno <= stmt.lineno <= (fn.end_lineno or 0):
            a = fn.args
            names = {x.arg for x in list(getattr(a, "posonlyargs", [])) + a.args + a.kwonlyargs}
            names |= {n for g in ast.walk(fn) if isinstance(g, (ast.Global, ast.Nonlocal)) for n in g.names}
    return names


def fix_for_line(ctx: FileContext, line: int, op: str = "") -> tuple:
    """(Fix, None) for the write at ``line``, or (None, reason)."""
    stmt = _innermost_statement(ctx.tree, line)
    if stmt is None:
        return None, "no statement at this line"
    outer = _params_and_globals(ctx.tree, stmt)

    def local(expr: ast.AST) -> bool:
        return isinstance(expr, ast.Name) and expr.id not in outer

    # The out-of-place twin of the statement, from the one table (gradguard._findings.twins).
    text = ctx.segment(stmt) if isinstance(stmt, (ast.Expr, ast.Assign, ast.AugAssign)) else None
    twin = twins.twin_statement(text, op, torch_name=torch_name(ctx)) if text else None
    if twin is not None:
        written = twin.split(" = ", 1)[0]
        # Rebinding is invisible only for a local name; fresh-buffer twins stop requiring grad.
        fresh = any(f"{k}(" in twin for k in ("zeros_like", "full_like", "empty_like"))
        safe = not fresh and written.isidentifier() and written not in outer
        return ctx.fix("twin", stmt, safe, f"Rewrite as `{twin}`", twin), None

    def is_data(expr: ast.AST) -> bool:
        return isinstance(expr, ast.Attribute) and expr.attr == "data"

    # inplace=True anywhere in the statement
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call) and any(k.arg == "inplace" and isinstance(k.value, ast.Constant)
                                              and k.value.value is True for k in node.keywords):
            if isinstance(stmt, ast.Expr) and stmt.value is node and node.args:
                return ctx.fix("drop_inplace_assign", node, local(node.args[0]), "Rewrite out of place"), None
            return ctx.fix("drop_inplace", node, True, "Remove `inplace=True`"), None
    if isinstance(stmt, ast.AugAssign):
        t: ast.expr = stmt.target
        if is_data(t) or (isinstance(t, ast.Subscript) and is_data(t.value)):
            return ctx.fix("no_grad", stmt, False, _NO_GRAD_TITLE), None
        if isinstance(t, ast.Subscript):
            return ctx.fix("clone_before", stmt, local(t.value), "Clone before the write"), None
        return ctx.fix("augassign", stmt, local(t), "Rewrite out of place"), None
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        t = stmt.targets[0]
        if is_data(t):
            return ctx.fix("no_grad", stmt, False, _NO_GRAD_TITLE), None
        if isinstance(t, ast.Subscript):
            if is_data(t.value):
                return ctx.fix("no_grad", stmt, False, _NO_GRAD_TITLE), None
            return ctx.fix("clone_before", stmt, local(t.value), "Clone before the write"), None
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        call = stmt.value
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr in T.INPLACE_METHODS:
            if is_data(f.value):
                return ctx.fix("no_grad", stmt, False, _NO_GRAD_TITLE), None
            if f.attr in T.INPLACE_WITH_TWIN and dotted(f.value):
                return ctx.fix("out_of_place_method", call, local(f.value), "Rewrite out of place"), None
        q = dotted(f) or ""
        if q.rsplit(".", 1)[-1] in {n.rsplit(".", 1)[-1] for n in T.INPLACE_TORCH_FUNCS} and call.args:
            return ctx.fix("out_of_place_func", call, local(call.args[0]), "Rewrite out of place"), None
    # an in-place method on a temporary inside a larger expression
    for node in ast.walk(stmt):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in T.INPLACE_WITH_TWIN and isinstance(node.func.value, ast.Call)):
            return ctx.fix("drop_underscore", node, True, "Use the out-of-place method"), None
    return None, "no in-place write gradguard knows how to rewrite at this line"


def run_from_report(args: argparse.Namespace) -> int:
    from gradguard.lint.engine import decode_source
    from gradguard.lint.files import write_or_diff
    from gradguard.lint.fixer import apply_fixes
    from gradguard.lint.values import Facts

    if args.paths:
        raise UsageError("--from-report takes no PATH arguments (the report names the files)")
    sites = load_report(args.from_report)
    by_file: dict = {}
    for file, line, op in sites:
        by_file.setdefault(file, []).append((line, op))
    unsafe = bool(args.unsafe_fixes)
    fixed = problems = 0
    changed = False
    for file, lines in by_file.items():
        path = Path(file)
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            for line, _ in lines:
                print(f"{file}:{line}: not fixing installed library code", file=sys.stderr)
            problems += len(lines)
            continue
        try:
            raw = path.read_bytes()
            source = decode_source(raw)
            tree = ast.parse(source)
        except (OSError, UnicodeDecodeError, LookupError, SyntaxError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
            for line, _ in lines:
                print(f"{file}:{line}: cannot fix: {reason}", file=sys.stderr)
            problems += len(lines)
            continue
        ctx = FileContext(file, source, tree, Facts(), source.splitlines())
        fixes: list = []
        for line, op in lines:
            fix, reason = fix_for_line(ctx, line, op)
            if fix is None:
                print(f"{file}:{line}: cannot fix{f' `{op}`' if op else ''}: {reason}", file=sys.stderr)
                problems += 1
            elif not fix.safe and not unsafe:
                print(f"{file}:{line}: fix is unsafe (the written tensor may be shared); rerun with --unsafe-fixes",
                      file=sys.stderr)
                problems += 1
            else:
                fixes.append(fix)
        outcome = apply_fixes(source, fixes)
        for fix, reason in outcome.failed:
            print(f"{file}:{fix.line}: cannot fix: {reason}", file=sys.stderr)
            problems += 1
        fixed += len(outcome.applied)
        if outcome.source != source:
            changed = True
            write_or_diff(path, file, source, outcome.source, args.diff, raw)
    print(f"{'Would fix' if args.diff else 'Fixed'} {fixed} of {len(sites)} reported write site"
          f"{'s' if len(sites) != 1 else ''}.", file=sys.stderr if args.diff else sys.stdout)
    if args.diff:  # as for `fix --diff`: 1 when there is something to change
        return 1 if changed or problems else 0
    return 1 if problems else 0
