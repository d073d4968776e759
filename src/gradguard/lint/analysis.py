"""Intra-procedural data flow over the stdlib ``ast``: which names hold tensors,
which ops saved them for backward, and where they are written in place.

One walk per scope (function body, or the module body for scripts) in source
order.  Branches are walked one after the other and loop back-edges are ignored:
that over-approximates nothing that matters here and keeps every finding tied to
a straight-line sequence "op saved T ... T written in place" that a reader can
see.  When in doubt a value is "maybe a tensor" and the rules stay quiet.

The walk produces *facts* (``Facts``); the rule classes in ``rules.py`` turn facts
into diagnostics.  Nothing here imports torch.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional

from gradguard._findings.twins import dotted
from gradguard.lint import tables as T

TENSOR, MAYBE, OTHER, JAX = "tensor", "maybe", "other", "jax"

_FRAMEWORK_RE = re.compile(r"^[ \t]*(?:import|from)[ \t]+(torch|jax|tensorflow)\b", re.M)
_OPTIMIZER_RE = re.compile(r"(?i)(?:^|_)(?:opt|optim|optimizer|optimiser)(?:s|\d+|_[a-z0-9]+)?$")
_SINK_CALLS = frozenset({"print", "str", "repr", "format", "append", "extend", "log", "info",
                         "debug", "warning", "write", "set_postfix", "add_scalar", "update"})
# Builtins that neither keep a reference to their arguments nor return a tensor.
_SCALAR_BUILTINS = frozenset({"len", "print", "isinstance", "issubclass", "int", "float", "bool", "str",
                              "repr", "hasattr", "getattr", "type", "id", "round", "range", "callable",
                              "enumerate", "zip", "hash", "format", "divmod"})
_PURE_BUILTINS = frozenset({"max", "min", "sum", "abs", "pow", "next", "iter", "reversed", "sorted"})
# Conventional import aliases, used only when a file does not bind the name itself.
_CONVENTIONAL = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional",
                 "np": "numpy", "jnp": "jax.numpy", "jax": "jax", "tf": "tensorflow"}


def frameworks_in(source: str) -> set[str]:
    """Frameworks imported by a file (a cheap regex gate before any analysis)."""
    return set(_FRAMEWORK_RE.findall(source))


@dataclass(frozen=True)
class Save:
    """An op that saved a tensor for backward."""

    op: str
    line: int
    output: bool  # True: the op saved its own result
    branch: tuple = ()  # the if/else arms the save happened in (see ScopeWalker.branch)


def exclusive(a: tuple, b: tuple) -> bool:
    """Two program points in different arms of the same ``if``: never both run."""
    arms = dict(a)
    return any(arms.get(node, arm) != arm for node, arm in b)


@dataclass(eq=False)
class Obj:
    """A tensor object: storage plus version counter, shared by views and aliases."""

    kind: str
    saves: list = field(default_factory=list)
    external: bool = False  # parameter, global, attribute, loop item: others may hold it
    escaped: bool = False  # stored in a container/attribute or passed to unknown code
    names: set = field(default_factory=set)


@dataclass(eq=False)
class ModuleInfo:
    """An ``nn.Module`` constructor call we recognised (``nn.ReLU(inplace=True)``)."""

    cls: str
    inplace: bool
    node: ast.Call
    inplace_kw: Optional[ast.keyword]

    @property
    def saves_output(self) -> bool:
        return self.cls in T.OUTPUT_SAVING_MODULES or (self.inplace and self.cls in T.OUTPUT_SAVING_WHEN_INPLACE)

    @property
    def saves_input(self) -> bool:
        return self.cls in T.INPUT_SAVING_MODULES or (not self.inplace and self.cls in T.INPUT_SAVING_UNLESS_INPLACE)


@dataclass(eq=False)
class Val:
    """The abstract value of an expression."""

    kind: str
    obj: Optional[Obj] = None
    via_data: bool = False  # reached through ``.data``: no version counter
    origin: Optional[int] = None  # statement index of the forward that built it (GG106)
    temp: bool = True  # not (yet) bound to a name
    module: Optional[ModuleInfo] = None
    optimizer: bool = False
    nograd: bool = False  # cannot require grad: factories, ids/masks, .detach(), int casts

    def view(self, **changes: object) -> "Val":
        """A value sharing this one's tensor object (a view or alias)."""
        return replace(self, **changes)


@dataclass(eq=False)
class Binding:
    name: str
    val: Val
    index: int
    reads: list = field(default_factory=list)


_OTHER = Val(OTHER)


@dataclass(eq=False)
class Write:
    """An in-place write to a tensor."""

    kind: str  # method | torch_func | augassign | setitem | inplace_kw | inplace_module | data
    node: ast.AST  # where to report
    stmt: ast.stmt
    target: Val
    saves: tuple
    method: Optional[str] = None
    data_form: Optional[str] = None  # for kind == "data": method | assign | setitem | augassign
    stmt_level: bool = False
    target_name: Optional[str] = None
    ctor: Optional[ModuleInfo] = None  # for inplace_module
    evidence: bool = True  # enough evidence that the target is a tensor
    safe: Callable[[], bool] = lambda: False
    in_no_grad: bool = False
    is_param: bool = False
    op_text: str = ""


@dataclass
class StepHazard:
    backward: ast.AST
    loss: str
    loss_line: int
    step_line: int
    step_text: str


@dataclass
class CtxStore:
    node: ast.Assign
    attr: str
    ctx: str
    val: Val


@dataclass
class TapeEvent:
    kind: str  # assign | numpy
    node: ast.AST
    text: str


@dataclass
class SequentialHazard:
    node: ast.Call  # the inplace module constructor
    saver: str
    saver_line: int


@dataclass
class InplaceFlag:
    """Any ``inplace=True`` keyword (for the noisy GG402)."""

    call: ast.Call
    kw: ast.keyword
    name: str
    stmt_level: bool
    arg_temp: bool
    module_ctor: bool


@dataclass
class Facts:
    writes: list = field(default_factory=list)
    step_hazards: list = field(default_factory=list)
    ctx_stores: list = field(default_factory=list)
    tape_events: list = field(default_factory=list)
    sequential: list = field(default_factory=list)
    inplace_flags: list = field(default_factory=list)
    frameworks: set = field(default_factory=set)
    stmt_call_attrs: set = field(default_factory=set)  # `self.<attr>(...)` used as a bare statement


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


class FileAnalyzer:
    """Runs the scope walker over every function (and the module body) of a file."""

    def __init__(self, tree: ast.Module, source: str) -> None:
        self.tree = tree
        self.source = source
        self.facts = Facts(frameworks=frameworks_in(source))
        self.aliases = collect_aliases(tree)

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

    def module_ctor(self, call: ast.Call, local: Optional[set] = None) -> Optional[ModuleInfo]:
        q = self.qual(call.func, local)
        if q is None or not q.startswith("torch.nn.") or q.count(".") != 2:
            return None
        cls = q.rsplit(".", 1)[1]
        if not cls[:1].isupper():
            return None
        kw = next((k for k in call.keywords if k.arg == "inplace"), None)
        inplace = kw is not None and _is_true(kw.value)
        if cls == "Threshold" and len(call.args) >= 3 and _is_true(call.args[2]):
            inplace = True
        elif cls in T.INPLACE_MODULES and cls != "Threshold" and call.args and _is_true(call.args[-1]) and len(call.args) >= 1:
            # nn.ReLU(True), nn.Dropout(0.5, True), nn.LeakyReLU(0.2, True)
            positional_index = {"ReLU": 0, "ReLU6": 0, "SELU": 0, "SiLU": 0, "Mish": 0, "Hardsigmoid": 0,
                                "Hardswish": 0, "ELU": 1, "CELU": 1, "LeakyReLU": 1, "Dropout": 1,
                                "Dropout1d": 1, "Dropout2d": 1, "Dropout3d": 1, "AlphaDropout": 1,
                                "FeatureAlphaDropout": 1, "Hardtanh": 2, "RReLU": 2}.get(cls)
            if positional_index is not None and len(call.args) == positional_index + 1:
                inplace = True
        return ModuleInfo(cls, inplace, call, kw if inplace else None)

    def run(self) -> Facts:
        fw = self.facts.frameworks
        if not fw:
            return self.facts
        if "torch" in fw and ("inplace" in self.source or "Sequential" in self.source):
            self._scan_calls()
        self._analyze_scope(self.tree, None, None)
        return self.facts

    # -- whole-file scans -------------------------------------------------
    def _scan_calls(self) -> None:
        """nn.Sequential chains (GG107) and every ``inplace=True`` (GG402)."""
        stmt_calls: set[int] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                stmt_calls.add(id(node.value))
                f = node.value.func
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
                    self.facts.stmt_call_attrs.add(f.attr)
            if not isinstance(node, ast.Call):
                continue
            kw = next((k for k in node.keywords if k.arg == "inplace" and _is_true(k.value)), None)
            if kw is not None:
                q = self.qual(node.func) or ""
                ctor = self.module_ctor(node)
                arg_temp = bool(node.args) and isinstance(node.args[0], ast.Call)
                self.facts.inplace_flags.append(InplaceFlag(node, kw, q.rsplit(".", 1)[-1] or "call",
                                                            id(node) in stmt_calls, arg_temp, ctor is not None))
            q = self.qual(node.func)
            if q == "torch.nn.Sequential":
                self._check_sequential(node)

    def _sequential_items(self, call: ast.Call) -> list:
        items = list(call.args)
        # nn.Sequential(OrderedDict([("a", nn.ReLU()), ...]))
        if len(items) == 1 and isinstance(items[0], ast.Call) and items[0].args:
            inner = items[0].args[0]
            if isinstance(inner, (ast.List, ast.Tuple)):
                items = [e.elts[1] for e in inner.elts if isinstance(e, ast.Tuple) and len(e.elts) == 2]
            elif isinstance(inner, ast.Dict):
                items = list(inner.values)
        return items

    def _check_sequential(self, call: ast.Call) -> None:
        saver: Optional[ModuleInfo] = None
        for item in self._sequential_items(call):
            info = self.module_ctor(item) if isinstance(item, ast.Call) else None
            if info is None:
                saver = None
                continue
            if info.inplace and saver is not None:
                self.facts.sequential.append(SequentialHazard(item, ast.unparse(saver.node.func), saver.node.lineno))
            if info.inplace:
                saver = info if info.saves_output else saver
            elif info.cls in T.PASSTHROUGH_MODULES:
                pass
            else:
                saver = info if info.saves_output else None

    # -- scopes -----------------------------------------------------------
    def _analyze_scope(self, scope: ast.AST, cls: Optional[ast.ClassDef], class_modules: Optional[dict]) -> None:
        body = scope.body
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            ScopeWalker(self, scope, cls, class_modules or {}).walk_function()
        elif isinstance(scope, ast.Module):
            ScopeWalker(self, scope, None, {}).walk_module()
        for stmt in _nested_defs(body):
            if isinstance(stmt, ast.ClassDef):
                self._analyze_scope(stmt, stmt, self._class_modules(stmt))
            else:
                self._analyze_scope(stmt, cls if isinstance(scope, ast.ClassDef) else None, class_modules)

    def _class_modules(self, cls: ast.ClassDef) -> dict:
        """``self.<attr> = nn.X(...)`` assignments anywhere in the class."""
        found: dict[str, ModuleInfo] = {}
        for fn in cls.body:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in _walk_statements(fn.body):
                if (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.value, ast.Call)):
                    t = node.targets[0]
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        info = self.module_ctor(node.value)
                        if info is not None:
                            if t.attr in found and found[t.attr].cls != info.cls:
                                found[t.attr] = ModuleInfo("?", False, node.value, None)  # ambiguous
                            else:
                                found[t.attr] = info
        return {k: v for k, v in found.items() if v.cls != "?"}


def _nested_defs(body: list) -> Iterator[ast.AST]:
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


class ScopeWalker:
    """Walks one scope in source order, tracking abstract values of names."""

    def __init__(self, fa: FileAnalyzer, scope: ast.AST, cls: Optional[ast.ClassDef], class_modules: dict) -> None:
        self.fa = fa
        self.facts = fa.facts
        self.scope = scope
        self.cls = cls
        self.class_modules = class_modules
        self.env: dict[str, Binding] = {}
        self.index = 0
        self.no_grad = 0
        self.tape: list = []  # stack of lists of (stmt_index, TapeEvent, receiver text)
        self.steps: list = []  # (index, line, text)
        self.sink = 0
        self.stmt: Optional[ast.stmt] = None
        self.locals: set[str] = set()
        self.ctx_name: Optional[str] = None
        self.ctx_stores: list = []
        self.external_names: set[str] = set()
        self.has_torch = "torch" in fa.facts.frameworks
        self.index_lines: dict[int, int] = {}
        self.branch: list = []  # (id of an If/Try statement, arm) for each enclosing arm
        self.params: set[str] = set()

    # -- helpers --------------------------------------------------------
    def qual(self, node: ast.AST) -> Optional[str]:
        return self.fa.qual(node, self.locals)

    def new(self, kind: str, origin: Optional[int] = None, nograd: bool = False, **kw) -> Val:
        obj = Obj(kind) if kind != OTHER else None
        return Val(kind, obj, origin=origin, nograd=nograd, **kw)

    def mark_tensor(self, v: Val) -> None:
        if v.obj is not None and v.obj.kind == MAYBE:
            v.obj.kind = TENSOR
            v.kind = TENSOR

    def save(self, v: Val, op: str, node: ast.AST, output: bool = False, grad_from: Optional[list] = None) -> None:
        """Record that ``op`` saved ``v`` -- autograd only saves when something it
        differentiates (``grad_from``, default ``v`` itself) may require grad."""
        if v.obj is None or v.kind not in (TENSOR, MAYBE) or self.no_grad:
            return
        if all(g.nograd or g.obj is None for g in (grad_from if grad_from is not None else [v])):
            return
        v.obj.saves.append(Save(op, node.lineno, output, tuple(self.branch)))

    def bind(self, name: str, v: Val) -> None:
        self.locals.add(name)
        if v.obj is not None:
            v.obj.names.add(name)
        if not v.temp:  # second name for the same value: an alias
            v = v.view(temp=False)
        v.temp = False
        self.env[name] = Binding(name, v, self.index)

    def lookup(self, name: str) -> Val:
        b = self.env.get(name)
        if b is None:
            # A global, a builtin or a closure variable: someone else holds it.
            if name in self.fa.aliases and name not in self.locals:
                v = Val(OTHER, temp=False)  # an imported module, class or function
            else:
                v = Val(MAYBE, Obj(MAYBE, external=True), temp=False, nograd=bool(_NOGRAD_NAME_RE.search(name)))
            b = Binding(name, v, -1)
            self.env[name] = b
        b.reads.append(self.index)
        return b.val

    # -- entry points ---------------------------------------------------
    def walk_function(self) -> None:
        fn = self.scope
        if _decorated_no_grad(fn, self.qual):
            self.no_grad += 1
        args = fn.args
        all_args = list(getattr(args, "posonlyargs", [])) + list(args.args) + list(args.kwonlyargs)
        defaults = dict(zip([a.arg for a in (list(getattr(args, "posonlyargs", [])) + list(args.args))][::-1],
                            list(args.defaults)[::-1]))
        defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
        is_method = self.cls is not None and not any(
            (dotted(d) or "") == "staticmethod" for d in fn.decorator_list)
        ag_fn = _is_autograd_function(self.cls, self.qual) and fn.name == "forward"
        for i, a in enumerate(all_args):
            self.locals.add(a.arg)
            if (i == 0 and is_method) or a.arg in ("self", "cls"):
                self.env[a.arg] = Binding(a.arg, Val(OTHER, temp=False), -1)
                continue
            if ag_fn and i == 0:
                # Function.forward runs with grad disabled: nothing in it is saved.
                self.no_grad += 1
                self.ctx_name = a.arg
                self.env[a.arg] = Binding(a.arg, Val(OTHER, temp=False), -1)
                continue
            kind = self._annotation_kind(a.annotation)
            d = defaults.get(a.arg)
            if kind is None:
                kind = OTHER if isinstance(d, ast.Constant) and d.value is not None else MAYBE
            v = Val(kind, Obj(kind, external=True) if kind != OTHER else None, temp=False,
                    nograd=bool(_NOGRAD_NAME_RE.search(a.arg)))
            self.params.add(a.arg)
            if v.obj is not None:
                v.obj.names.add(a.arg)
            self.env[a.arg] = Binding(a.arg, v, -1)
        for a in (args.vararg, args.kwarg):
            if a is not None:
                self.locals.add(a.arg)
                self.env[a.arg] = Binding(a.arg, Val(OTHER, temp=False), -1)
        self.walk_body(fn.body)
        self._finish()

    def walk_module(self) -> None:
        self.walk_body(self.scope.body)
        self._finish()

    def _annotation_kind(self, ann: Optional[ast.AST]) -> Optional[str]:
        if ann is None:
            return None
        text = ast.unparse(ann) if hasattr(ast, "unparse") else ""
        if re.search(r"\b(jnp\.ndarray|jax\.Array|jax\.numpy\.ndarray|chex\.Array)\b", text):
            return JAX
        if re.fullmatch(r"(torch\.)?Tensor|(torch\.nn\.)?Parameter", text):
            return TENSOR
        if re.fullmatch(r"(int|float|str|bool|None|Optional\[(int|float|str|bool)\]|.*Config)", text):
            return OTHER
        return None

    def _finish(self) -> None:
        # Autograd Function: tensors stored on ctx (decided at the end, once every
        # use of the value has told us whether it is a tensor).
        for store in self.ctx_stores:
            v = store.val
            if v.obj is not None and not v.via_data and v.obj.kind == TENSOR:
                self.facts.ctx_stores.append(store)

    # -- statements -----------------------------------------------------
    def walk_body(self, body: list) -> None:
        for stmt in body:
            self.walk_stmt(stmt)

    def walk_stmt(self, stmt: ast.stmt) -> None:
        self.index += 1
        self.stmt = stmt
        self.index_lines[self.index] = stmt.lineno
        if isinstance(stmt, ast.Expr):
            self.ev(stmt.value, stmt_level=True)
        elif isinstance(stmt, ast.Assign):
            v = self.ev(stmt.value)
            for t in stmt.targets:
                self.assign(t, v, stmt.value)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                v = self.ev(stmt.value)
                kind = self._annotation_kind(stmt.annotation)
                if kind == TENSOR:
                    self.mark_tensor(v)
                self.assign(stmt.target, v, stmt.value)
        elif isinstance(stmt, ast.AugAssign):
            self.aug_assign(stmt)
        elif isinstance(stmt, (ast.Return,)):
            if stmt.value is not None:
                self.ev(stmt.value)
        elif isinstance(stmt, ast.If):
            self.ev(stmt.test)
            self.branch.append((id(stmt), "body"))
            self.walk_body(stmt.body)
            self.branch[-1] = (id(stmt), "orelse")
            self.walk_body(stmt.orelse)
            self.branch.pop()
        elif isinstance(stmt, ast.While):
            self.ev(stmt.test)
            self.walk_body(stmt.body)
            self.walk_body(stmt.orelse)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            it = self.ev(stmt.iter)
            item = Val(MAYBE, Obj(MAYBE, external=True), temp=False)
            call = stmt.iter
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr in ("parameters", "named_parameters")):
                item = Val(TENSOR, Obj(TENSOR, external=True), temp=False)
            elif it.kind == OTHER and not isinstance(call, (ast.Name, ast.Attribute, ast.Call)):
                item = Val(OTHER, temp=False)
            if isinstance(stmt.target, ast.Name):
                self.bind(stmt.target.id, item)
            else:
                self.assign(stmt.target, Val(MAYBE, Obj(MAYBE, external=True), temp=False), None)
            self.walk_body(stmt.body)
            self.walk_body(stmt.orelse)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            self.walk_with(stmt)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            self.walk_body(stmt.body)
            for h in stmt.handlers:
                if h.name:
                    self.env[h.name] = Binding(h.name, Val(OTHER, temp=False), self.index)
                self.walk_body(h.body)
            self.walk_body(stmt.orelse)
            self.walk_body(stmt.finalbody)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.env[stmt.name] = Binding(stmt.name, Val(OTHER, temp=False), self.index)
            for dec in stmt.decorator_list:
                self.ev(dec)
        elif isinstance(stmt, ast.Delete):
            for t in stmt.targets:
                if isinstance(t, ast.Name):
                    self.env.pop(t.id, None)
                else:
                    self.ev(t)
        elif isinstance(stmt, (ast.Raise, ast.Assert)):
            for child in ast.iter_child_nodes(stmt):
                self.ev(child)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for a in stmt.names:
                name = a.asname or a.name.split(".")[0]
                self.locals.add(name)
                self.env[name] = Binding(name, Val(OTHER, temp=False), self.index)
        elif isinstance(stmt, (ast.Global, ast.Nonlocal)):
            self.external_names.update(stmt.names)
        elif type(stmt).__name__ == "Match":
            self.ev(stmt.subject)
            for case in stmt.cases:
                self.walk_body(case.body)

    def walk_with(self, stmt: ast.AST) -> None:
        pushed_grad = 0
        tape = False
        for item in stmt.items:
            ce = item.context_expr
            q = self.qual(ce.func if isinstance(ce, ast.Call) else ce) or ""
            if q.endswith(("no_grad", "inference_mode")) or (
                    q.endswith("set_grad_enabled") and isinstance(ce, ast.Call) and ce.args
                    and isinstance(ce.args[0], ast.Constant) and ce.args[0].value is False):
                pushed_grad += 1
            elif q.endswith("GradientTape") and (q.startswith("tensorflow") or q == "GradientTape"):
                tape = True
            v = self.ev(ce)
            if item.optional_vars is not None:
                self.assign(item.optional_vars, Val(OTHER) if tape else v, None)
        self.no_grad += pushed_grad
        if tape:
            self.tape.append([])
        start = self.index
        self.walk_body(stmt.body)
        self.no_grad -= pushed_grad
        if tape:
            self._finish_tape(self.tape.pop(), stmt, start)

    def _finish_tape(self, events: list, stmt: ast.AST, start: int) -> None:
        for ev_index, event, receiver in events:
            if event.kind == "numpy":
                self.facts.tape_events.append(event)
                continue
            # `v.assign(...)` cuts the gradient only if v is read afterwards in the tape.
            end = (event.node.end_lineno, event.node.end_col_offset)
            if receiver and any(isinstance(n, (ast.Name, ast.Attribute)) and isinstance(n.ctx, ast.Load)
                                and (n.lineno, n.col_offset) > end and dotted(n) == receiver
                                for s in stmt.body for n in ast.walk(s)):
                self.facts.tape_events.append(event)

    def assign(self, target: ast.AST, v: Val, value_node: Optional[ast.AST]) -> None:
        if isinstance(target, ast.Name):
            if target.id in self.external_names and v.obj is not None:
                v.obj.external = True
            self.bind(target.id, v)
        elif isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value_node, (ast.Tuple, ast.List)) and len(value_node.elts) == len(target.elts) \
                    and not any(isinstance(e, ast.Starred) for e in target.elts):
                for t, e in zip(target.elts, value_node.elts):
                    # values already evaluated: re-read names without recording a second read
                    self.assign(t, self._peek(e), None)
                return
            views = (isinstance(value_node, ast.Call) and isinstance(value_node.func, ast.Attribute)
                     and value_node.func.attr in ("split", "chunk", "unbind", "tensor_split")
                     and v.obj is not None)
            for t in target.elts:
                t = t.value if isinstance(t, ast.Starred) else t
                if v.kind == OTHER:  # h, w = x.shape
                    self.assign(t, Val(OTHER), None)
                elif views:
                    self.assign(t, v.view(temp=True), None)
                else:
                    kind = JAX if v.kind == JAX else MAYBE
                    self.assign(t, Val(kind, Obj(kind), origin=v.origin), None)
        elif isinstance(target, ast.Attribute):
            if target.attr == "data" and self.has_torch:
                base = self.ev(target.value)
                self.record_write("data", target, base, target.value, data_form="assign",
                                  evidence=self._tensor_evidence(base, target.value))
                return
            if self.ctx_name and isinstance(target.value, ast.Name) and target.value.id == self.ctx_name:
                self.ctx_stores.append(CtxStore(self.stmt, target.attr, self.ctx_name, v))
                return
            self.ev(target.value)
            if v.obj is not None:
                v.obj.escaped = True
            d = dotted(target)
            if d is not None:
                nv = v.view(temp=False)
                if nv.obj is not None:
                    nv.obj.external = True
                self.env[d] = Binding(d, nv, self.index)
        elif isinstance(target, ast.Subscript):
            self.setitem(target, v, aug=None)
        elif isinstance(target, ast.Starred):
            self.assign(target.value, v, None)

    def _peek(self, node: ast.AST) -> Val:
        if isinstance(node, ast.Name) and node.id in self.env:
            return self.env[node.id].val
        return Val(MAYBE, Obj(MAYBE))

    def setitem(self, target: ast.Subscript, v: Optional[Val], aug: Optional[ast.AugAssign]) -> None:
        base = self.ev(target.value)
        self.ev(target.slice)
        if base.kind == JAX:
            self.record_write("jax_setitem", target, base, target.value)
            return
        if base.via_data:
            owner = data_owner(target.value)
            self.record_write("data", target, base, owner, data_form="setitem",
                              evidence=self._tensor_evidence(base, owner if owner is not None else target.value))
            return
        if base.obj is not None and base.kind in (TENSOR, MAYBE):
            self.record_write("setitem", target, base, target.value)
            if v is not None and v.obj is not None and not v.nograd:
                base.nograd = False
        if v is not None and v.obj is not None and base.kind != TENSOR:
            v.obj.escaped = True  # stored in a container

    def aug_assign(self, stmt: ast.AugAssign) -> None:
        v = self.ev(stmt.value)
        t = stmt.target
        if isinstance(t, ast.Subscript):
            self.setitem(t, v, aug=stmt)
            return
        if isinstance(t, ast.Attribute) and t.attr == "data" and self.has_torch:
            base = self.ev(t.value)
            self.record_write("data", stmt, base, t.value, data_form="augassign",
                              evidence=self._tensor_evidence(base, t.value))
            return
        name = t.id if isinstance(t, ast.Name) else dotted(t)
        if name is None:
            self.ev(t)
            return
        cur = self.lookup(name) if isinstance(t, ast.Name) else self._attr_place(t)
        if cur.kind in (OTHER, JAX) or cur.obj is None:
            # numbers, lists, immutable JAX arrays: `+=` rebinds, nothing is written
            kind = JAX if (cur.kind == JAX or v.kind == JAX) else (OTHER if v.kind == OTHER and cur.kind == OTHER else MAYBE)
            self.bind(name, self.new(kind))
            return
        if isinstance(stmt.op, ast.MatMult):
            return  # `@=` is not in-place for tensors
        self.record_write("augassign", stmt, cur, t, target_name=name)
        if v.obj is not None and not v.nograd:
            cur.nograd = False
        if v.kind == TENSOR:
            self.mark_tensor(cur)
        if v.origin is not None and (cur.origin is None or v.origin < cur.origin):
            cur.origin = v.origin

    def _attr_place(self, node: ast.Attribute) -> Val:
        d = dotted(node)
        if d is not None and d in self.env:
            b = self.env[d]
            b.reads.append(self.index)
            return b.val
        self.ev(node.value)
        v = Val(MAYBE, Obj(MAYBE, external=True), temp=False)
        if d is not None:
            self.env[d] = Binding(d, v, -1)
        return v

    # -- writes ---------------------------------------------------------
    def _tensor_evidence(self, base: Val, node: ast.AST) -> bool:
        """Enough evidence that ``node`` (the owner of a ``.data``) is a tensor."""
        if base.kind == TENSOR or (base.obj is not None and base.obj.saves):
            return True
        last = (dotted(node) or "").rsplit(".", 1)[-1].lower()
        return bool(re.search(r"weight|bias|param|grad|emb|tensor|^w$|^b$|^p$", last))

    def record_write(self, kind: str, node: ast.AST, target: Val, target_expr: Optional[ast.AST] = None,
                     **kw) -> None:
        """Record an in-place write of ``target`` (the value of ``target_expr``)."""
        if target.obj is None:
            return
        name = kw.get("target_name")
        if name is None and target_expr is not None and not isinstance(target_expr, ast.Call):
            name = dotted(target_expr)
            kw["target_name"] = name
        if kind == "jax_setitem":
            self.facts.writes.append(Write(kind, node, self.stmt, target, (), in_no_grad=bool(self.no_grad), **kw))
            return
        if not self.has_torch:
            return
        obj = target.obj
        binding = self.env.get(name) if name else None
        is_param = binding is not None and binding.index == -1 and name in self.params
        index = self.index
        # Snapshot: aliases created after the write do not matter to the rewrite.
        shared = obj.external or obj.escaped or len(obj.names) > 1

        def safe() -> bool:
            # A rewrite that rebinds the name is only invisible to the rest of the
            # program if nobody else holds the tensor.
            if target.temp and name is None:
                return True
            if shared or name is None or "." in name:
                return False
            if kind == "inplace_kw" and not kw.get("stmt_level"):
                # F.relu(x, inplace=True) used as a value: x must not be read later
                return binding is not None and not any(r > index for r in binding.reads)
            return True

        here = tuple(self.branch)
        saves = tuple(sv for sv in obj.saves if not exclusive(sv.branch, here))
        w = Write(kind, node, self.stmt, target, saves, safe=safe,
                  in_no_grad=bool(self.no_grad), is_param=is_param, **kw)
        self.facts.writes.append(w)

    # -- expressions ----------------------------------------------------
    def ev(self, node: ast.AST, stmt_level: bool = False) -> Val:
        m = getattr(self, "ev_" + type(node).__name__, None)
        if m is not None:
            if type(node) is ast.Call:
                return self.ev_Call(node, stmt_level)
            return m(node)
        # Everything else: evaluate children for reads and side effects.
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.ev(child)
        return Val(MAYBE, Obj(MAYBE))

    def ev_Name(self, node: ast.Name) -> Val:
        return self.lookup(node.id)

    def ev_Constant(self, node: ast.Constant) -> Val:
        return _OTHER

    def ev_JoinedStr(self, node: ast.JoinedStr) -> Val:
        self.sink += 1
        for v in node.values:
            self.ev(v)
        self.sink -= 1
        return _OTHER

    def ev_FormattedValue(self, node: ast.FormattedValue) -> Val:
        self.ev(node.value)
        return _OTHER

    def _containers(self, node: ast.AST) -> Val:
        for e in ast.iter_child_nodes(node):
            if isinstance(e, ast.expr):
                v = self.ev(e)
                if v.obj is not None:
                    v.obj.escaped = True
        return _OTHER

    ev_Tuple = ev_List = ev_Set = ev_Dict = _containers

    def _opaque(self, node: ast.AST) -> Val:
        # Comprehensions and lambdas run later or in their own scope: record the
        # reads (they keep values alive) but do not track writes inside.
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in self.env:
                b = self.env[n.id]
                b.reads.append(self.index)
                if b.val.obj is not None:
                    b.val.obj.escaped = True
        return Val(MAYBE, Obj(MAYBE))

    ev_Lambda = ev_ListComp = ev_SetComp = ev_DictComp = ev_GeneratorExp = _opaque

    def ev_NamedExpr(self, node: ast.NamedExpr) -> Val:
        v = self.ev(node.value)
        self.assign(node.target, v, node.value)
        return v

    def ev_Starred(self, node: ast.Starred) -> Val:
        return self.ev(node.value)

    def ev_Attribute(self, node: ast.Attribute) -> Val:
        if self.qual(node) is not None:
            return _OTHER  # module attributes: torch.float32, np.pi, ...
        d = dotted(node)
        if d is not None and d in self.env:
            b = self.env[d]
            b.reads.append(self.index)
            return b.val
        if d is not None and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            v = Val(MAYBE, Obj(MAYBE, external=True), temp=False, nograd=bool(_NOGRAD_NAME_RE.search(node.attr)))
            self.env[d] = Binding(d, v, -1)
            return v
        base = self.ev(node.value)
        attr = node.attr
        if attr == "data" and base.obj is not None:
            return base.view(via_data=True, nograd=True)
        if attr in T.NON_TENSOR_RESULTS:
            return _OTHER
        if attr in ("T", "mT", "H", "mH", "real", "imag") and base.obj is not None:
            return base.view()
        if attr == "at" and base.kind == JAX:
            return Val(JAX, base.obj)
        if attr == "grad" and base.kind in (TENSOR, MAYBE):
            return Val(MAYBE, Obj(MAYBE, external=True), temp=False)
        if base.kind == JAX:
            return self.new(JAX)
        return Val(MAYBE, Obj(MAYBE, external=True), temp=False)

    def ev_Subscript(self, node: ast.Subscript) -> Val:
        base = self.ev(node.value)
        self.ev(node.slice)
        if base.kind == JAX:
            return self.new(JAX)
        if base.obj is None or base.kind == OTHER:
            return Val(MAYBE, Obj(MAYBE, external=True))
        # basic indexing returns a view; anything else (strings, index tensors)
        # returns something new
        sl = node.slice
        parts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        basic = all(isinstance(p, (ast.Slice,)) or (isinstance(p, ast.Constant) and (
            p.value is None or p.value is Ellipsis or isinstance(p.value, int)))
            or (isinstance(p, ast.UnaryOp) and isinstance(p.operand, ast.Constant)) for p in parts)
        if basic:
            return base.view()
        return Val(MAYBE, Obj(MAYBE, external=base.obj.external), origin=base.origin)

    def ev_BinOp(self, node: ast.BinOp) -> Val:
        left = self.ev(node.left)
        right = self.ev(node.right)
        kinds = (left.kind, right.kind)
        origin = _min_origin(left.origin, right.origin)
        if JAX in kinds:
            return self.new(JAX, origin)
        if kinds == (OTHER, OTHER):
            return _OTHER
        op = node.op
        if isinstance(op, ast.MatMult) and self.has_torch:
            for v in (left, right):
                self.mark_tensor(v)
            # each operand is saved to compute the gradient of the other
            self.save(left, "@", node, grad_from=[right])
            self.save(right, "@", node, grad_from=[left])
        elif isinstance(op, (ast.Mult, ast.Div)) and self.has_torch:
            sym = "*" if isinstance(op, ast.Mult) else "/"
            if right.kind == TENSOR and left.kind == TENSOR:
                self.save(left, sym, node, grad_from=[right])
                self.save(right, sym, node, grad_from=[left, right] if sym == "/" else [left])
        elif isinstance(op, ast.Pow) and left.kind == TENSOR:
            self.save(left, "**", node, grad_from=[left, right])
            if right.kind == TENSOR:
                self.save(right, "**", node, grad_from=[left, right])
        kind = TENSOR if TENSOR in kinds else MAYBE
        return self.new(kind, origin, nograd=_all_nograd(left, right))

    def ev_UnaryOp(self, node: ast.UnaryOp) -> Val:
        v = self.ev(node.operand)
        if isinstance(node.op, ast.Not) or v.kind == OTHER:
            return _OTHER
        return self.new(v.kind, v.origin, nograd=v.nograd)

    def ev_Compare(self, node: ast.Compare) -> Val:
        vals = [self.ev(node.left)] + [self.ev(c) for c in node.comparators]
        if isinstance(node.ops[0], (ast.Is, ast.IsNot, ast.In, ast.NotIn)):
            return _OTHER
        return self.new(TENSOR if any(v.kind == TENSOR for v in vals) else MAYBE, nograd=True)

    def ev_BoolOp(self, node: ast.BoolOp) -> Val:
        vals = [self.ev(v) for v in node.values]
        return Val(MAYBE, Obj(MAYBE, escaped=True), origin=_min_origin(*(v.origin for v in vals)))

    def ev_IfExp(self, node: ast.IfExp) -> Val:
        self.ev(node.test)
        a, b = self.ev(node.body), self.ev(node.orelse)
        if a.kind == JAX and b.kind == JAX:
            return self.new(JAX)
        return Val(MAYBE, Obj(MAYBE, escaped=True), origin=_min_origin(a.origin, b.origin))

    # -- calls ----------------------------------------------------------
    def ev_Call(self, node: ast.Call, stmt_level: bool = False) -> Val:
        func = node.func
        q = self.qual(func)
        recv: Optional[Val] = None
        if q is None and isinstance(func, ast.Attribute):
            recv = self.ev(func.value)
        elif q is None:
            callee = self.ev(func)
        sink = isinstance(func, (ast.Name, ast.Attribute)) and (
            (func.id if isinstance(func, ast.Name) else func.attr) in _SINK_CALLS
            or (dotted(func) or "").startswith(("logging.", "logger.", "log.", "wandb.")))
        if sink:
            self.sink += 1
        args = [self.ev(a) for a in node.args]
        kwargs = {k.arg: self.ev(k.value) for k in node.keywords}
        if sink:
            self.sink -= 1
        if q is not None:
            return self._call_qualified(node, q, args, kwargs, stmt_level)
        if recv is not None:
            return self._call_method(node, func, recv, args, kwargs, stmt_level)
        # calling a local value: a module instance we know, or anything else
        if callee.module is not None:
            return self._call_module(node, callee.module, args, stmt_level, dotted(func) or "module")
        if isinstance(func, ast.Name) and func.id not in self.locals:
            if func.id in _SCALAR_BUILTINS:
                return _OTHER
            if func.id in _PURE_BUILTINS:
                return Val(MAYBE, Obj(MAYBE), origin=_min_origin(*(v.origin for v in args)))
        return self._unknown_call(node, args, kwargs)

    def _unknown_call(self, node: ast.Call, args: list, kwargs: dict) -> Val:
        for v in list(args) + list(kwargs.values()):
            if v.obj is not None:
                v.obj.escaped = True
        return Val(MAYBE, Obj(MAYBE), origin=self.index)

    def _tensor_args(self, args: list, kwargs: dict) -> list:
        # keyword arguments such as min=/max=/dim= are scalars; only these carry tensors
        vals = list(args) + [v for k, v in kwargs.items() if k in _TENSOR_KWARGS]
        return [v for v in vals if v.kind in (TENSOR, MAYBE) and v.obj is not None]

    def _call_qualified(self, node: ast.Call, q: str, args: list, kwargs: dict, stmt_level: bool) -> Val:
        short = q.rsplit(".", 1)[-1]
        if q.startswith(("jax.", "jax.numpy")) or q == "jax":
            if q.startswith(("jax.numpy.", "jax.random.", "jax.nn.", "jax.lax.", "jax.scipy.")):
                return self.new(JAX)
            return Val(MAYBE, Obj(MAYBE), origin=self.index)
        if q.startswith(("numpy.", "math.", "random.", "tensorflow.", "builtins.")):
            return _OTHER
        if not q.startswith("torch") or not self.has_torch:
            return self._unknown_call(node, args, kwargs)
        if q.startswith("torch.optim.") and short[:1].isupper():
            return Val(OTHER, optimizer=True)
        if q in ("torch.autograd.backward", "torch.autograd.grad") and node.args:
            self._backward(node, node.args[0], args[0] if args else None)
            return self.new(MAYBE)
        if q in T.INPLACE_TORCH_FUNCS or (q.startswith("torch.nn.init.") and q.endswith("_")):
            if args and args[0].obj is not None:
                self.mark_tensor(args[0])
                self.record_write("torch_func", node, args[0], node.args[0], method=q, stmt_level=stmt_level,
                                  op_text=q)
                return args[0].view()
            return self.new(TENSOR, self.index)
        if q.startswith("torch.nn.functional.") and short in T.FUNCTIONAL_INPLACE_ARG:
            idx = T.FUNCTIONAL_INPLACE_ARG[short]
            inplace = _is_true(next((k.value for k in node.keywords if k.arg == "inplace"), None)) or (
                len(node.args) > idx and _is_true(node.args[idx]))
            if inplace and args and args[0].obj is not None:
                x = args[0]
                self.record_write("inplace_kw", node, x, node.args[0], method=short, stmt_level=stmt_level, op_text=f"F.{short}")
                if short in T.FUNCTIONAL_OUTPUT_SAVING_WHEN_INPLACE:
                    self.save(x, f"F.{short}", node, output=True)
                return x.view()
        if q.startswith(T.TORCH_NON_TENSOR_PREFIXES):
            return _OTHER
        # nn.Linear(...) and friends: a module value
        if q.startswith("torch.nn.") and q.count(".") == 2 and short[:1].isupper():
            return Val(OTHER, module=self.fa.module_ctor(node, self.locals))
        display = _display(q)
        tensors = self._tensor_args(args, kwargs)
        if q in _FACTORIES or q.endswith("_like"):
            rg = next((k.value for k in node.keywords if k.arg == "requires_grad"), None)
            return self.new(TENSOR, None, nograd=rg is None or (isinstance(rg, ast.Constant) and not rg.value))
        if q in T.OUTPUT_SAVING_FUNCS:
            for v in args[:1]:
                self.mark_tensor(v)
            out = self.new(TENSOR, self.index, nograd=_all_nograd(*args[:1]))
            self.save(out, display, node, output=True, grad_from=args[:1])
            return out
        if q in T.INPUT_SAVING_FUNCS:
            if short in ("mul", "div", "true_divide"):
                tensors = tensors if len(tensors) == 2 and all(v.kind == TENSOR for v in tensors) else []
            for v in tensors:
                self.mark_tensor(v)
                others = [o for o in tensors if o is not v]
                self.save(v, display, node, grad_from=others if others else [v])
            out = self.new(TENSOR, _min_origin(*(v.origin for v in args)), nograd=_all_nograd(*tensors))
            if short == "scaled_dot_product_attention":
                self.save(out, display, node, output=True, grad_from=tensors)
            return out
        for v in args[:1]:
            self.mark_tensor(v)
        return self.new(TENSOR, _min_origin(*(v.origin for v in args)) if args else None,
                        nograd=bool(tensors) and _all_nograd(*tensors))

    def _call_method(self, node: ast.Call, func: ast.Attribute, recv: Val, args: list, kwargs: dict,
                     stmt_level: bool) -> Val:
        m = func.attr
        rd = dotted(func.value)
        # self.<module attr>(x)
        if rd == "self" and m in self.class_modules:
            return self._call_module(node, self.class_modules[m], args, stmt_level, f"self.{m}")
        if recv.module is not None and m == "forward":
            return self._call_module(node, recv.module, args, stmt_level, rd or "module")
        if m == "backward" and self.has_torch:
            if isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Attribute) \
                    and func.value.func.attr == "scale" and func.value.args:
                self._backward(node, func.value.args[0], None)  # scaler.scale(loss).backward()
            elif recv.kind in (TENSOR, MAYBE) and recv.obj is not None and not node.args:
                self._backward(node, func.value, recv)
            elif node.args:
                self._backward(node, node.args[0], args[0] if args else None)  # accelerator.backward(loss)
            return _OTHER
        if m == "step" and self.has_torch:
            text = rd or ""
            if recv.optimizer or (_OPTIMIZER_RE.search(text.rsplit(".", 1)[-1]) and "sched" not in text.lower()) \
                    or ("scaler" in text.lower() and node.args):
                self.steps.append((self.index, node.lineno, ast.unparse(node), tuple(self.branch)))
            return _OTHER
        if self.tape and m in ("assign", "assign_add", "assign_sub", "scatter_nd_update", "scatter_update"):
            self.tape[-1].append((self.index, TapeEvent("assign", node, f"{rd or '?'}.{m}"), rd))
            return _OTHER
        if self.tape and m == "numpy" and not self.sink:
            self.tape[-1].append((self.index, TapeEvent("numpy", node, f"{rd or ast.unparse(func.value)}.numpy()"), rd))
            return _OTHER
        if recv.kind == JAX:
            return self.new(JAX)
        if m == "save_for_backward" and self.ctx_name and rd == self.ctx_name:
            for v in args:
                self.mark_tensor(v)
            return _OTHER
        if recv.kind == OTHER or recv.obj is None:
            if rd in ("self", "cls") or recv.module is not None:
                return self._unknown_call(node, args, kwargs)
            return _OTHER  # numpy arrays, lists, strings stay what they are
        if not self.has_torch:
            return self._unknown_call(node, args, kwargs)
        if m in T.INPLACE_METHODS and not m.startswith("_"):
            if recv.via_data:
                self.record_write("data", node, recv, data_owner(func.value), method=m, data_form="method", stmt_level=stmt_level,
                                  evidence=True)
            else:
                self.mark_tensor(recv)
                self.record_write("method", node, recv, func.value, method=m, stmt_level=stmt_level, op_text=f".{m}()")
            if m[:-1] in T.OUTPUT_SAVING_METHODS:
                self.save(recv, f".{m}()", node, output=True)
            if not all(a.nograd or a.obj is None for a in args):
                recv.nograd = False  # writing a grad-requiring value makes it require grad
            return recv.view()
        if m in T.VIEW_METHODS:
            self.mark_tensor(recv)
            return recv.view(nograd=recv.nograd or m == "detach")
        if m in T.NON_TENSOR_RESULTS:
            return _OTHER
        if m in T.OUTPUT_SAVING_METHODS:
            self.mark_tensor(recv)
            out = self.new(TENSOR, recv.origin, nograd=recv.nograd)
            self.save(out, f".{m}()", node, output=True, grad_from=[recv])
            return out
        if m in T.INPUT_SAVING_METHODS:
            self.mark_tensor(recv)
            operands = [recv] + self._tensor_args(args, kwargs)
            for v in operands:
                if m in ("matmul", "mm", "bmm", "mv", "dot", "inner", "outer"):
                    self.mark_tensor(v)
                others = [o for o in operands if o is not v]
                self.save(v, f".{m}()", node, grad_from=others if others else [v])
            return self.new(TENSOR, recv.origin, nograd=_all_nograd(*operands))
        if m in T.TENSOR_OPERAND_METHODS:
            if args and args[0].kind == TENSOR and recv.kind == TENSOR:
                self.save(recv, f".{m}()", node, grad_from=[args[0]])
                self.save(args[0], f".{m}()", node, grad_from=[recv])
            return self.new(recv.kind, recv.origin, nograd=_all_nograd(recv, *args))
        if m in T.TENSOR_METHODS:
            self.mark_tensor(recv)
            return self.new(TENSOR, recv.origin, nograd=recv.nograd or m in _INT_CASTS or (
                m == "to" and any(isinstance(a, ast.Attribute) and a.attr in _INT_DTYPES for a in node.args)))
        return self._unknown_call(node, args, kwargs)

    def _call_module(self, node: ast.Call, info: ModuleInfo, args: list, stmt_level: bool, text: str) -> Val:
        x = args[0] if args else None
        label = f"{text} (nn.{info.cls})"
        if x is None or x.obj is None:
            return self.new(TENSOR, self.index)
        self.mark_tensor(x)
        if info.inplace:
            self.record_write("inplace_module", node, x, node.args[0], ctor=info, stmt_level=stmt_level, op_text=label)
            if info.saves_output:
                self.save(x, label, node, output=True)
            return x.view()
        if info.cls in T.PASSTHROUGH_MODULES:
            return x.view()
        # Layers with parameters save their input whenever the weights require grad.
        has_params = info.cls in _PARAM_MODULES
        if info.saves_input:
            self.save(x, label, node, grad_from=None if not has_params else [Val(TENSOR, Obj(TENSOR))])
        out = self.new(TENSOR, self.index, nograd=x.nograd and not has_params)
        if info.saves_output:
            self.save(out, label, node, output=True, grad_from=[x])
        return out

    def _backward(self, node: ast.AST, loss_node: ast.AST, loss: Optional[Val]) -> None:
        if loss is None:
            if isinstance(loss_node, ast.Name) and loss_node.id in self.env:
                loss = self.env[loss_node.id].val
            else:
                return
        if loss.origin is None:
            return
        here = tuple(self.branch)
        for idx, line, text, branch in reversed(self.steps):  # the step closest to the backward
            if loss.origin < idx < self.index and not exclusive(branch, here):
                label = ast.unparse(loss_node) if hasattr(ast, "unparse") else "loss"
                origin_line = self.index_lines.get(loss.origin, 0)
                self.facts.step_hazards.append(StepHazard(node, label, origin_line, line, text))
                return


_FACTORIES = frozenset(f"torch.{n}" for n in (
    "zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "eye", "rand", "randn",
    "randint", "randperm", "tensor", "as_tensor", "from_numpy", "asarray", "tril_indices", "triu_indices",
    "empty_strided", "bernoulli", "multinomial", "normal"))
_TENSOR_KWARGS = frozenset({"input", "other", "weight", "bias", "mat1", "mat2", "tensor", "query", "key", "value",
                            "target", "exponent", "tensors"})
_INT_CASTS = frozenset({"long", "int", "bool", "short", "byte", "char"})
_INT_DTYPES = frozenset({"long", "int", "int64", "int32", "int16", "int8", "uint8", "bool"})
_PARAM_MODULES = frozenset({"Linear", "Bilinear", "LazyLinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                            "ConvTranspose2d", "ConvTranspose3d", "LazyConv1d", "LazyConv2d", "LazyConv3d",
                            "LayerNorm", "GroupNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                            "SyncBatchNorm", "LSTM", "GRU", "RNN", "MultiheadAttention", "PReLU"})
_NOGRAD_NAME_RE = re.compile(r"(?:^|_)(?:ids?|mask|masks|idx|indices|index|labels?|positions?|lengths?|lens|"
                             r"counts?|seqlens?|offsets?)$")


def _all_nograd(*vals: Val) -> bool:
    tensors = [v for v in vals if v.obj is not None]
    return bool(tensors) and all(v.nograd for v in tensors)


def _min_origin(*origins: Optional[int]) -> Optional[int]:
    vals = [o for o in origins if o is not None]
    return min(vals) if vals else None


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


def analyze(tree: ast.Module, source: str) -> Facts:
    """All facts the rules need about one parsed file."""
    return FileAnalyzer(tree, source).run()
