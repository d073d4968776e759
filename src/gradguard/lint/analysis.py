"""Data flow over the stdlib ``ast`` for one file: the driver.

One walk per scope (function body, or the module body for scripts) in source
order; see ``statements`` (scopes), ``expressions`` (values of expressions),
``values`` (the abstract domain), ``modules`` (nn.Module summaries) and
``summaries`` (what each function of the file does to its arguments).  When in
doubt a value is "maybe a tensor" and the rules stay quiet.  Nothing here imports torch.
"""
from __future__ import annotations

import ast
import re
from typing import Optional

from gradguard._findings.twins import dotted
from gradguard.lint.classes import unpassed_none_params
from gradguard.lint.modules import ModuleScanner
from gradguard.lint.names import _CONVENTIONAL, _nested_defs, collect_aliases, frameworks_in
from gradguard.lint.statements import ForwardTrackingWalker, ScopeWalker
from gradguard.lint.summaries import FunctionIndex, FunctionSummary, no_grad_only
from gradguard.lint.values import Facts, ModuleInfo

# Files where some function may run only with grad disabled (a cheap gate before the
# whole-file call-site scan of ``summaries.no_grad_only``).
# setattr(self, name, v): any attribute may hold anything (``classes.ScalarStores`` is off).
_SETATTR_SELF = re.compile(r"setattr\(\s*self\b")
_NO_GRAD_GATE = re.compile(r"no_grad|inference_mode|set_grad_enabled|def \w*inference")


class FileAnalyzer(ModuleScanner):
    """Runs the scope walker over every function (and the module body) of a file."""

    def __init__(self, tree: ast.Module, source: str) -> None:
        self.tree = tree
        self.source = source
        self.facts = Facts(frameworks=frameworks_in(source))
        self.aliases = collect_aliases(tree)
        self.index: Optional[FunctionIndex] = None
        self.no_grad_only: set = set()
        self._summaries: dict = {}
        self.call_sites: dict = {}  # id(top-level FunctionDef) -> [{param: the argument cannot require grad}]
        self._spans: dict = {}  # id(FunctionDef) -> where its facts are, for a re-walk
        self._modules_of_class: dict = {}
        self._scalars_of_class: dict = {}
        self._class_facts: dict = {}  # ("unpassed", id(ClassDef)) -> never-passed None parameters
        self._setattr_self = bool(_SETATTR_SELF.search(source))
        # GG113 follows DDP forwards only where the file names DistributedDataParallel
        self.walker: type[ScopeWalker] = ForwardTrackingWalker if "DistributedDataParallel" in source else ScopeWalker

    def qual(self, node: ast.AST, local: Optional[set] = None) -> Optional[str]:
        d = dotted(node)
        if d is None:
            return None
        head, _, rest = d.partition(".")
        if head in self.aliases:
            base = self.aliases[head]
        elif head in _CONVENTIONAL and not (local and head in local):
            base = _CONVENTIONAL[head]
        else:
            return None
        return f"{base}.{rest}" if rest else base

    def scalar_attrs(self, cls: ast.ClassDef) -> frozenset:
        """``classes.ScalarStores`` of ``cls``, from its one module scan (none in a file
        with ``setattr(self, ...)``)."""
        if self._setattr_self:
            return frozenset()
        self._class_modules(cls)  # the same walk notes the scalar attributes
        return self._scalars_of_class[id(cls)]

    def never_passed(self, cls: ast.ClassDef, method: str) -> frozenset:
        """``classes.unpassed_none_params`` of ``cls`` for ``method``, computed once per class."""
        key = ("unpassed", id(cls))
        if key not in self._class_facts:
            self._class_facts[key] = unpassed_none_params(cls)
        return self._class_facts[key].get(method, frozenset())

    def run(self) -> Facts:
        fw = self.facts.frameworks
        if not fw:
            return self.facts
        if "torch" in fw and ("inplace" in self.source or "Sequential" in self.source):
            self._scan_calls()
        self.index = FunctionIndex(self.tree, self.qual)
        if _NO_GRAD_GATE.search(self.source):
            self.no_grad_only = no_grad_only(self.index, self.tree, self.qual)
        self._analyze_scope(self.tree, None, None)
        self._rewalk_with_nograd_arguments()
        return self.facts

    _FACT_LISTS = ("writes", "step_hazards", "ddp_hazards", "ctx_stores", "tape_events")

    def note_call(self, name: str, node: ast.Call, args: list, kwargs: dict) -> None:
        """A call ``name(...)`` of a top-level function of this file: which of its
        parameters get a value that cannot require grad (missing ones take a default)."""
        fn = self.index.functions.get(name) if self.index is not None else None
        if fn is None:
            return
        params = [a.arg for a in list(getattr(fn.args, "posonlyargs", [])) + list(fn.args.args)]
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            self.call_sites.setdefault(id(fn), []).append({})
            return
        given = {p: v for p, v in zip(params, args)}
        given.update({k: v for k, v in kwargs.items() if k in params})
        self.call_sites.setdefault(id(fn), []).append(
            {p: (p not in given or given[p].obj is None or given[p].nograd) for p in params})

    def _rewalk_with_nograd_arguments(self) -> None:
        """Walk again, with those parameters known not to require grad, each top-level
        function that every call in the file passes no-grad values (and that is not
        used as a value): ``rescale_zero_terminal_snr(self.betas)`` with betas from
        ``torch.linspace`` saves nothing a backward needs."""
        if self.index is None:
            return
        for fn in self.index.functions.values():
            calls = self.call_sites.get(id(fn))
            span = self._spans.get(id(fn))
            if not calls or span is None or id(fn) in self.index.value_used:
                continue
            nograd = {p for p in calls[0] if all(c.get(p, False) for c in calls)}
            if not nograd:
                continue
            scratch = Facts(frameworks=self.facts.frameworks)
            walker = self.walker(self, fn, None, {}, facts=scratch)
            walker.nograd_params = nograd
            walker.walk_function()
            for name in self._FACT_LISTS:  # the function's facts, replaced (by identity)
                kept = [x for x in getattr(self.facts, name) if id(x) not in span[name]]
                setattr(self.facts, name, kept + getattr(scratch, name))
            self._spans.pop(id(fn))

    def function_summary(self, name: str, cls_name: Optional[str] = None) -> Optional[FunctionSummary]:
        """What the file's function ``name`` (or method ``cls_name.name``) does to its
        arguments; computed once by walking it on the side, None while recursing."""
        if self.index is None:
            return None
        if cls_name is None:
            fn, cls = self.index.functions.get(name), None
        else:
            fn, cls = self.index.methods.get((cls_name, name), (None, None))
        if fn is None:
            return None
        key = id(fn)
        if key in self._summaries:
            return self._summaries[key]
        self._summaries[key] = None  # recursion guard
        scratch = Facts(frameworks=self.facts.frameworks)
        walker = self.walker(self, fn, cls, self._class_modules(cls) if cls is not None else {}, facts=scratch)
        walker.walk_function()
        positional = [a.arg for a in list(getattr(fn.args, "posonlyargs", [])) + list(fn.args.args)]
        if walker.is_method and positional:
            positional = positional[1:]
        summary = FunctionSummary(positional, [a.arg for a in fn.args.kwonlyargs])
        summary.returns_nograd = bool(walker.returns) and all(v.obj is None or v.nograd for v in walker.returns)
        for p, obj in walker.param_objs.items():
            if obj.saves:
                s = obj.saves[0]
                summary.saved[p] = (s.op, s.line)
            for w in scratch.writes:
                if w.target.obj is obj and w.kind != "data" and p not in summary.written:
                    summary.written[p] = w.node.lineno
        self._summaries[key] = summary
        return summary

    # -- whole-file scans -------------------------------------------------
    def _analyze_scope(self, scope: ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef,
                       cls: Optional[ast.ClassDef], class_modules: Optional[dict[str, ModuleInfo]]) -> None:
        body = scope.body
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            before = {n: len(getattr(self.facts, n)) for n in self._FACT_LISTS}
            self.walker(self, scope, cls, class_modules or {}).walk_function()
            self._spans[id(scope)] = {n: {id(x) for x in getattr(self.facts, n)[before[n]:]} for n in self._FACT_LISTS}
        elif isinstance(scope, ast.Module):
            self.walker(self, scope, None, {}).walk_module()
        for stmt in _nested_defs(body):
            if id(scope) in self.no_grad_only and isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.no_grad_only.add(id(stmt))  # a helper defined inside a no-grad-only function
            if isinstance(stmt, ast.ClassDef):
                self._analyze_scope(stmt, stmt, self._class_modules(stmt))
            else:
                self._analyze_scope(stmt, cls if isinstance(scope, ast.ClassDef) else None, class_modules)


def analyze(tree: ast.Module, source: str) -> Facts:
    """All facts the rules need about one parsed file."""
    return FileAnalyzer(tree, source).run()

