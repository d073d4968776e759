"""Statements and scopes: walks one function (or module) body in source order,
binding names, tracking ``no_grad`` blocks and branches, recording writes."""
from __future__ import annotations

import ast
import re
from typing import Any, Callable, Optional, cast

from gradguard._findings.twins import dotted
from gradguard.lint.classes import dead_arm
from gradguard.lint.ddp import merge_forwards
from gradguard.lint.expressions import Analyzer, ExpressionEvaluator, TapeRecord
from gradguard.lint.names import _NOGRAD_NAME_RE, _decorated_no_grad, _is_autograd_function, data_owner
from gradguard.lint.values import (
    JAX,
    MAYBE,
    OTHER,
    TENSOR,
    Binding,
    CtxStore,
    Facts,
    ModuleInfo,
    Obj,
    Save,
    Val,
    Write,
    exclusive,
)

# The scopes a walker walks: a function body, or the module body for scripts.
Scope = ast.FunctionDef | ast.AsyncFunctionDef | ast.Module


class ScopeWalker(ExpressionEvaluator):
    """Walks one scope in source order, tracking abstract values of names."""

    def __init__(self, fa: Analyzer, scope: Scope, cls: Optional[ast.ClassDef],
                 class_modules: dict[str, ModuleInfo], facts: Optional[Facts] = None) -> None:
        self.fa = fa  # the FileAnalyzer (see ``Analyzer``)
        self.facts = fa.facts if facts is None else facts
        self.loop_depth = 0
        self.returns: list[Val] = []  # values of the `return` statements
        self.nograd_params: set[str] = set()  # parameters every call site in the file passes a no-grad value
        self.param_objs: dict[str, Obj] = {}  # parameter name -> its tensor object on entry (for summaries)
        self.is_method = False
        self.scope = scope
        self.cls = cls
        self.class_modules = class_modules
        self.env: dict[str, Binding] = {}
        self.index = 0
        self.no_grad = 0
        self.tape = []  # stack of lists of (stmt_index, TapeEvent, receiver text)
        self.steps = []  # (index, the step call, text, branch)
        self.sink = 0
        self.stmt: Optional[ast.stmt] = None
        self.locals: set[str] = set()
        self.ctx_name: Optional[str] = None
        self.ctx_stores: list[CtxStore] = []
        self.external_names: set[str] = set()
        self.has_torch = "torch" in fa.facts.frameworks
        self.index_lines: dict[int, int] = {}
        self.branch = []  # (id of an If/Try statement, arm) for each enclosing arm
        self.params: set[str] = set()
        self.no_sync = 0
        self.fwd_seq = 0  # DDP forwards seen (see ``ddp``)
        self.dead_saves = 0  # > 0 inside the operands of an op with an integer result
        self.never_passed: frozenset[str] = frozenset()  # None parameters no call passes (classes)

    # -- helpers --------------------------------------------------------
    def qual(self, node: ast.AST) -> Optional[str]:
        return self.fa.qual(node, self.locals)

    @property
    def current_stmt(self) -> ast.stmt:
        """The statement being walked (facts are only recorded while walking one)."""
        assert self.stmt is not None
        return self.stmt

    def new(self, kind: str, origin: Optional[int] = None, nograd: bool = False, **kw: Any) -> Val:
        obj = Obj(kind) if kind != OTHER else None
        return Val(kind, obj, origin=origin, nograd=nograd, **kw)

    def mark_tensor(self, v: Val) -> None:
        if v.obj is not None and v.obj.kind == MAYBE:
            v.obj.kind = TENSOR
            v.kind = TENSOR

    def save(self, v: Val, op: str, node: ast.expr, output: bool = False,
             grad_from: Optional[list[Val]] = None) -> None:
        """Record that ``op`` saved ``v`` -- autograd only saves when something it
        differentiates (``grad_from``, default ``v`` itself) may require grad.

        Not recorded: saves of a ``.grad`` tensor (gradient post-processing after
        backward -- projections, clipping -- builds graphs nothing backpropagates), and
        saves while evaluating the operand of an op with an integer result
        (``torch.argmax(torch.abs(u))``, ``torch.exp(x) > 1``): no gradient flows back
        through it, so the saved tensor is never read."""
        if v.obj is None or v.kind not in (TENSOR, MAYBE) or self.no_grad or self.dead_saves or v.gradient:
            return
        if all(g.nograd or g.obj is None for g in (grad_from if grad_from is not None else [v])):
            return
        v.obj.saves.append(Save(op, node.lineno, output, tuple(self.branch), v.via_data))

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
        assert not isinstance(fn, ast.Module), "walk_function walks a function scope"
        if _decorated_no_grad(fn, self.qual) or id(fn) in self.fa.no_grad_only:
            self.no_grad += 1
        args = fn.args
        all_args = list(getattr(args, "posonlyargs", [])) + list(args.args) + list(args.kwonlyargs)
        defaults = dict(zip([a.arg for a in (list(getattr(args, "posonlyargs", [])) + list(args.args))][::-1],
                            list(args.defaults)[::-1]))
        defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
        is_method = self.cls is not None and not any(
            (dotted(d) or "") == "staticmethod" for d in fn.decorator_list)
        self.is_method = is_method
        if self.cls is not None:
            self.never_passed = self.fa.never_passed(self.cls, fn.name)
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
                    nograd=bool(_NOGRAD_NAME_RE.search(a.arg)) or a.arg in self.nograd_params)
            self.params.add(a.arg)
            if v.obj is not None:
                v.obj.names.add(a.arg)
                self.param_objs[a.arg] = v.obj
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
    def walk_body(self, body: list[ast.stmt]) -> None:
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
                self.returns.append(self.ev(stmt.value))
        elif isinstance(stmt, ast.If):
            self.ev(stmt.test)
            dead = dead_arm(stmt.test, self.never_passed) if self.never_passed else None
            self.branch.append((id(stmt), "body"))
            if dead != "body":
                self.walk_body(stmt.body)
            self.branch[-1] = (id(stmt), "orelse")
            if dead != "orelse":
                self.walk_body(stmt.orelse)
            self.branch.pop()
        elif isinstance(stmt, ast.While):
            self.ev(stmt.test)
            self.walk_loop(stmt, lambda: self.ev(stmt.test))
            self.walk_body(stmt.orelse)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            it = self.ev(stmt.iter)
            item = Val(MAYBE, Obj(MAYBE, external=True), temp=False)
            call = stmt.iter
            method = call.func.attr if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) else None
            params_loop = method in ("parameters", "named_parameters")
            if params_loop:
                item = Val(TENSOR, Obj(TENSOR, external=True), temp=False,
                           leaf=f"a parameter from `.{method}()` (line {stmt.lineno})")
            elif it.kind == OTHER and not isinstance(call, (ast.Name, ast.Attribute, ast.Call)):
                item = Val(OTHER, temp=False)

            def bind_target() -> None:
                if isinstance(stmt.target, ast.Name):
                    self.bind(stmt.target.id, item.view(obj=Obj(item.obj.kind, external=True)) if item.obj else item)
                elif params_loop and isinstance(stmt.target, ast.Tuple) and len(stmt.target.elts) == 2:
                    self.assign(stmt.target.elts[0], Val(OTHER, temp=False), None)  # for name, p in named_parameters()
                    self.assign(stmt.target.elts[1], item.view(obj=Obj(TENSOR, external=True)), None)
                else:
                    self.assign(stmt.target, Val(MAYBE, Obj(MAYBE, external=True), temp=False), None)

            bind_target()
            self.walk_loop(stmt, bind_target)
            self.walk_body(stmt.orelse)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            self.walk_with(stmt)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            tried = cast(ast.Try, stmt)  # ast.TryStar (3.11+) has the same fields
            self.walk_body(tried.body)
            for h in tried.handlers:
                if h.name:
                    self.env[h.name] = Binding(h.name, Val(OTHER, temp=False), self.index)
                self.walk_body(h.body)
            self.walk_body(tried.orelse)
            self.walk_body(tried.finalbody)
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
        elif isinstance(stmt, ast.Match):
            self.ev(stmt.subject)
            for case in stmt.cases:
                self.walk_body(case.body)

    def walk_loop(self, stmt: ast.For | ast.AsyncFor | ast.While, next_iteration: Callable[[], object]) -> None:
        """A loop body, twice when not nested deeper than two loops: the second walk
        sees what the first iteration saved (the back edge), so a write in iteration
        k+1 into a tensor iteration k saved -- ``h += ...`` after ``o = h * w`` -- is found."""
        self.loop_depth += 1
        self.walk_body(stmt.body)
        if self.loop_depth <= 2:
            next_iteration()
            self.walk_body(stmt.body)
        self.loop_depth -= 1

    def walk_with(self, stmt: ast.With | ast.AsyncWith) -> None:
        pushed_grad = pushed_sync = 0
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
            elif isinstance(ce, ast.Call) and isinstance(ce.func, ast.Attribute) and ce.func.attr == "no_sync":
                pushed_sync += 1
            v = self.ev(ce)
            if item.optional_vars is not None:
                self.assign(item.optional_vars, Val(OTHER) if tape else v, None)
        self.no_grad += pushed_grad
        self.no_sync += pushed_sync
        if tape:
            self.tape.append([])
        start = self.index
        self.walk_body(stmt.body)
        self.no_grad -= pushed_grad
        self.no_sync -= pushed_sync
        if tape:
            self._finish_tape(self.tape.pop(), stmt, start)

    def _finish_tape(self, events: list[TapeRecord], stmt: ast.With | ast.AsyncWith, start: int) -> None:
        for _ev_index, event, receiver in events:
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
            if v.items is not None and not any(isinstance(e, ast.Starred) for e in target.elts) \
                    and sum(1 for k in v.items if isinstance(k, int) and k >= 0) == len(target.elts) \
                    and all(i in v.items for i in range(len(target.elts))):
                for i, t in enumerate(target.elts):  # e, s = pair  (pair = (torch.exp(x), x))
                    self.assign(t, v.items[i], None)
                return
            views: Optional[str] = None  # `.split()` (line 3): the targets are views of one node
            if (isinstance(value_node, ast.Call) and isinstance(value_node.func, ast.Attribute)
                    and value_node.func.attr in ("split", "chunk", "unbind", "tensor_split")
                    and v.obj is not None):
                views = f"`.{value_node.func.attr}()` (line {value_node.lineno})"
            for t in target.elts:
                t = t.value if isinstance(t, ast.Starred) else t
                if v.kind == OTHER:  # h, w = x.shape
                    self.assign(t, Val(OTHER), None)
                elif views:
                    self.assign(t, v.view(temp=True, multi_view=views), None)
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
                self.ctx_stores.append(CtxStore(self.current_stmt, target.attr, self.ctx_name, v))
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
        if base.np_tensor is not None:
            self.record_write("numpy", aug or target, Val(TENSOR, base.np_tensor), None,
                              target_name=ast.get_source_segment(self.fa.source, target.value) or "the array",
                              op_text="item assignment")
            return
        item = self.item_of(base, target.slice)
        if item is not None:
            if aug is not None and item.obj is not None and not isinstance(aug.op, ast.MatMult):
                # laterals[0] += x: `__iadd__` on the tensor stored there, in place
                self.record_write("augassign", aug, item, target,
                                  target_name=ast.get_source_segment(self.fa.source, target) or ast.unparse(target))
            elif aug is None:
                assert base.items is not None  # item_of found the item there
                base.items[item_key(target.slice)] = v if v is not None else Val(MAYBE, Obj(MAYBE))
            return
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
        if cur.np_tensor is not None and not isinstance(stmt.op, ast.MatMult):
            # a -= a.mean() on the array torch.from_numpy(a) wraps: an unversioned write
            self.record_write("numpy", stmt, Val(TENSOR, cur.np_tensor), None, target_name=name,
                              op_text=f"`{name} {_aug_text(stmt.op)}= ...`")
            return
        if cur.kind in (OTHER, JAX) or cur.obj is None:
            # numbers, lists, immutable JAX arrays: `+=` rebinds, nothing is written
            kind = (JAX if (cur.kind == JAX or v.kind == JAX)
                    else (OTHER if v.kind == OTHER and cur.kind == OTHER else MAYBE))
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
        if v.fwd and not v.nograd:
            cur.fwd = merge_forwards(cur.fwd, v.fwd)

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

    def record_write(self, kind: str, node: ast.expr | ast.stmt, target: Val, target_expr: Optional[ast.AST] = None,
                     **kw: Any) -> None:
        """Record an in-place write of ``target`` (the value of ``target_expr``)."""
        if target.obj is None:
            return
        name = kw.get("target_name")
        if name is None and target_expr is not None and not isinstance(target_expr, ast.Call):
            name = dotted(target_expr)
            kw["target_name"] = name
        if kind == "jax_setitem":
            self.facts.writes.append(Write(kind, node, self.current_stmt, target, (), in_no_grad=bool(self.no_grad),
                                           function=getattr(self.scope, "name", ""), **kw))
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
        w = Write(kind, node, self.current_stmt, target, saves, safe=safe, in_no_grad=bool(self.no_grad),
                  is_param=is_param, function=getattr(self.scope, "name", ""), **kw)
        self.facts.writes.append(w)

    # -- expressions ----------------------------------------------------


def item_key(sl: ast.AST) -> object:
    if isinstance(sl, ast.UnaryOp) and isinstance(sl.operand, ast.Constant):
        value: Any = sl.operand.value  # an int here (see ``item_of``)
        return -value
    return sl.value if isinstance(sl, ast.Constant) else None


def _aug_text(op: ast.operator) -> str:
    return {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
            ast.Pow: "**"}.get(type(op), "?")


class ForwardTrackingWalker(ScopeWalker):
    """The walker for files that mention ``DistributedDataParallel``: every value also
    carries, per DDP model, the earliest forward its graph reaches (``Val.fwd``, see
    ``ddp``) -- from operands to results, dropped where a value cannot require grad."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fwd_frames: list[tuple] = []  # per expression being evaluated: its operands' forwards

    def ev(self, node: ast.AST, stmt_level: bool = False) -> Val:
        frames = self.fwd_frames
        frames.append(())
        v = super().ev(node, stmt_level)
        dep = frames.pop()
        if v.nograd:  # no graph: it depends on no forward
            return v.view(fwd=()) if v.fwd else v
        if dep:
            merged = merge_forwards(v.fwd, dep)
            if merged is not v.fwd:
                v = v.view(fwd=merged)
        if frames and v.fwd:
            frames[-1] = merge_forwards(frames[-1], v.fwd)
        return v
