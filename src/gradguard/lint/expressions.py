"""Expression evaluation: the abstract value of each expression and the saves and
writes its calls make (methods, torch functions, modules, backward)."""
from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any, Optional, Protocol

from gradguard._findings.twins import dotted
from gradguard.lint import tables as T
from gradguard.lint.ddp import DDP_CLASSES, ddp_model, hazard, record_forward
from gradguard.lint.names import _NOGRAD_NAME_RE, _OPTIMIZER_RE, _display, _is_true, data_owner
from gradguard.lint.values import (
    _OTHER,
    JAX,
    MAYBE,
    OTHER,
    TENSOR,
    Binding,
    Facts,
    ModuleInfo,
    Obj,
    StepHazard,
    TapeEvent,
    Val,
    _all_nograd,
    _min_origin,
    exclusive,
)

if TYPE_CHECKING:
    from gradguard.lint.summaries import FunctionIndex, FunctionSummary

# A TensorFlow tape's recorded event: (statement index, the event, the receiver's dotted name).
TapeRecord = tuple[int, TapeEvent, Optional[str]]
# An optimizer step: (statement index, the call, its source text, the enclosing if/else arms).
StepRecord = tuple[int, ast.Call, str, tuple[tuple[int, str], ...]]

_SINK_CALLS = frozenset({"print", "str", "repr", "format", "append", "extend", "log", "info",
                         "debug", "warning", "write", "set_postfix", "add_scalar", "update"})
# Builtins that neither keep a reference to their arguments nor return a tensor.
_SCALAR_BUILTINS = frozenset({"len", "print", "isinstance", "issubclass", "int", "float", "bool", "str",
                              "repr", "hasattr", "getattr", "type", "id", "round", "range", "callable",
                              "enumerate", "zip", "hash", "format", "divmod"})
_PURE_BUILTINS = frozenset({"max", "min", "sum", "abs", "pow", "next", "iter", "reversed", "sorted"})
# Conventional import aliases, used only when a file does not bind the name itself.


class Analyzer(Protocol):
    """What the walker uses of its ``analysis.FileAnalyzer`` (described here, not
    imported: analysis imports statements, which imports this module)."""

    facts: Facts
    source: str
    aliases: dict[str, str]
    no_grad_only: set[int]  # ids of the FunctionDefs that only run with grad disabled
    index: Optional[FunctionIndex]

    def qual(self, node: ast.AST, local: Optional[set[str]] = None) -> Optional[str]: ...
    def module_ctor(self, call: ast.Call, local: Optional[set[str]] = None) -> Optional[ModuleInfo]: ...
    def function_summary(self, name: str, cls_name: Optional[str] = None) -> Optional[FunctionSummary]: ...
    def note_call(self, name: str, node: ast.Call, args: list[Val], kwargs: dict[Optional[str], Val]) -> None: ...
    def scalar_attrs(self, cls: ast.ClassDef) -> frozenset[str]: ...
    def never_passed(self, cls: ast.ClassDef, method: str) -> frozenset[str]: ...


class ExpressionEvaluator:
    """Mixin of ``ScopeWalker``: ``ev(node)`` and the call handlers."""

    # The walker state these methods use; ``statements.ScopeWalker`` sets it (see there).
    fa: Analyzer
    facts: Facts
    env: dict[str, Binding]
    locals: set[str]
    index: int
    index_lines: dict[int, int]
    sink: int
    tape: list[list[TapeRecord]]
    steps: list[StepRecord]
    branch: list[tuple[int, str]]
    cls: Optional[ast.ClassDef]
    class_modules: dict[str, ModuleInfo]
    ctx_name: Optional[str]
    has_torch: bool
    dead_saves: int
    no_sync: int  # depth of `with model.no_sync():` blocks
    no_grad: int
    fwd_seq: int

    if TYPE_CHECKING:  # defined by ``statements.ScopeWalker``
        def qual(self, node: ast.AST) -> Optional[str]: ...
        def new(self, kind: str, origin: Optional[int] = None, nograd: bool = False, **kw: Any) -> Val: ...
        def mark_tensor(self, v: Val) -> None: ...
        def save(self, v: Val, op: str, node: ast.expr, output: bool = False,
                 grad_from: Optional[list[Val]] = None) -> None: ...
        def lookup(self, name: str) -> Val: ...
        def assign(self, target: ast.AST, v: Val, value_node: Optional[ast.AST]) -> None: ...
        def record_write(self, kind: str, node: ast.expr | ast.stmt, target: Val, target_expr: Optional[ast.AST] = None,
                         **kw: Any) -> None: ...

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

    ev_Set = _containers

    def _sequence(self, node: ast.Tuple | ast.List) -> Val:
        """``[lat0(c0), lat1(c1)]``: a container that remembers its items, so that
        ``laterals[0] += ...`` writes the tensor ``lat0`` returned."""
        items: dict = {}
        starred = False
        for i, e in enumerate(node.elts):
            v = self.ev(e)
            starred = starred or isinstance(e, ast.Starred)
            if v.obj is not None:
                v.obj.escaped = True
            items[i] = v
        n = len(items)
        if starred:
            return Val(OTHER, temp=True)
        items.update({i - n: v for i, v in list(items.items())})
        return Val(OTHER, items=items)

    ev_Tuple = ev_List = _sequence

    def ev_Dict(self, node: ast.Dict) -> Val:
        items: dict = {}
        for k, e in zip(node.keys, node.values):
            if k is not None:
                self.ev(k)
            v = self.ev(e)
            if v.obj is not None:
                v.obj.escaped = True
            if isinstance(k, ast.Constant) and isinstance(k.value, (str, int)):
                items[k.value] = v
        return Val(OTHER, items=items)

    def item_of(self, base: Val, sl: ast.AST) -> Optional[Val]:
        """The item ``base[sl]`` of a container display, for a constant index or key."""
        if base.items is None:
            return None
        key = sl.value if isinstance(sl, ast.Constant) else None
        if isinstance(sl, ast.UnaryOp) and isinstance(sl.op, ast.USub) and isinstance(sl.operand, ast.Constant):
            key = -sl.operand.value if isinstance(sl.operand.value, int) else None
        if isinstance(key, (int, str)) and not isinstance(key, bool):
            return base.items.get(key)
        return None

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
            if self.cls is not None and node.attr in self.fa.scalar_attrs(self.cls):
                v = Val(OTHER, temp=False)  # only ever a Python number (classes.ScalarStores)
                self.env[d] = Binding(d, v, -1)
                return v
            v = Val(MAYBE, Obj(MAYBE, external=True), temp=False, nograd=bool(_NOGRAD_NAME_RE.search(node.attr)))
            self.env[d] = Binding(d, v, -1)
            return v
        base = self.ev(node.value)
        attr = node.attr
        if attr == "data" and base.obj is not None:
            return base.view(via_data=True, nograd=True, leaf=None, multi_view=None)
        if attr in T.NON_TENSOR_RESULTS:
            return _OTHER
        if attr in ("T", "mT", "H", "mH", "real", "imag") and base.obj is not None:
            return base.view()
        if attr == "at" and base.kind == JAX:
            return Val(JAX, base.obj)
        if attr == "grad" and base.kind in (TENSOR, MAYBE):
            # a .grad tensor does not require grad (outside backward(create_graph=True))
            return Val(MAYBE, Obj(MAYBE, external=True), temp=False, nograd=True, gradient=True)
        if base.kind == JAX:
            return self.new(JAX)
        return Val(MAYBE, Obj(MAYBE, external=True), temp=False)

    def ev_Subscript(self, node: ast.Subscript) -> Val:
        base = self.ev(node.value)
        self.ev(node.slice)
        item = self.item_of(base, node.slice)
        if item is not None:
            return item
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
        self.dead_saves += 1  # a boolean result: no gradient flows into the operands
        vals = [self.ev(node.left)] + [self.ev(c) for c in node.comparators]
        self.dead_saves -= 1
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
        if type(func) is ast.Call:
            alias = _getattr_self_default(node)
            if alias is not None:
                return self.ev(alias).view()  # getattr(t, "to_local", lambda: t)(): t, or its local shard
        if q is None:
            int_result = type(func) is ast.Attribute and func.attr in _INT_RESULT
        else:
            int_result = q.startswith("torch.") and q[q.rfind(".") + 1:] in _INT_RESULT
        self.dead_saves += int_result
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
        self.dead_saves -= int_result
        if sink:
            self.sink -= 1
        if q is not None:
            return self._call_qualified(node, q, args, kwargs, stmt_level)
        if recv is not None and isinstance(func, ast.Attribute):  # recv is only set for attributes
            return self._call_method(node, func, recv, args, kwargs, stmt_level)
        # calling a local value: a module instance we know, or anything else
        if callee.module is not None:
            return self._call_module(node, callee.module, args, stmt_level, dotted(func) or "module")
        if callee.ddp is not None:
            return self._ddp_forward(node, callee.ddp, args, kwargs)
        if isinstance(func, ast.Name) and func.id not in self.locals:
            if func.id in _SCALAR_BUILTINS:
                return _OTHER
            if func.id in _PURE_BUILTINS:
                if args and all(v.kind == OTHER for v in args) and all(v.kind == OTHER for v in kwargs.values()):
                    return _OTHER  # max(progress, 0.0) of numbers: a number
                return Val(MAYBE, Obj(MAYBE), origin=_min_origin(*(v.origin for v in args)))
            if self.has_torch:
                summary = self.fa.function_summary(func.id)
                self._apply_summary(node, summary, args, kwargs, func.id, stmt_level)
                self.fa.note_call(func.id, node, args, kwargs)
                if summary is not None and summary.returns_nograd:
                    self._unknown_call(node, args, kwargs)
                    return self.new(MAYBE, self.index, nograd=True)
        return self._unknown_call(node, args, kwargs)

    def _share_numpy(self, arr_node: ast.AST, arr: Val, tensor: Val, node: ast.Call) -> None:
        """``t = torch.from_numpy(a)``: ``a`` and ``t`` share one buffer, and NumPy's
        in-place writes to ``a`` bump no version counter."""
        if isinstance(arr_node, ast.Name):
            b = self.env.get(arr_node.id)
            if b is not None:
                b.val = b.val.view(np_tensor=tensor.obj, temp=False)  # never mutate a shared value
        assert tensor.obj is not None  # a new TENSOR value always has its object
        tensor.obj.names.add(f"from_numpy@{node.lineno}")

    def _apply_summary(self, node: ast.Call, summary, args: list, kwargs: dict, label: str, stmt_level: bool) -> None:
        """A call to a function of this file: its writes to and saves of its parameters
        happen to the arguments (see ``summaries``)."""
        if summary is None:
            return
        for param, (where, key) in summary.bind(node).items():
            v = args[key] if where == "pos" else kwargs.get(key)
            expr = node.args[key] if where == "pos" else next(k.value for k in node.keywords if k.arg == key)
            if v is None or v.obj is None:
                continue
            if param in summary.written:
                self.record_write("call", node, v, expr, method=label, stmt_level=stmt_level,
                                  op_text=f"`{label}()` (which writes its argument `{param}` in place, line "
                                          f"{summary.written[param]})")
            if param in summary.saved:
                op, line = summary.saved[param]
                self.save(v, f"{label}() ({op}, line {line})", node)

    def _apply_function_class(self, node: ast.Call, fsum, args: list, label: str) -> Val:
        """``MyFn.apply(a, b)``: the tensors MyFn.forward keeps for backward are saved."""
        for i, how in fsum.saved.items():
            if i < len(args) and args[i].obj is not None:
                self.mark_tensor(args[i])
                self.save(args[i], f"{label}.apply ({how}, line {fsum.line})", node)
        tensors = [v for v in args if v.obj is not None]
        return self.new(TENSOR, _min_origin(*(v.origin for v in args)), nograd=bool(tensors) and _all_nograd(*tensors))

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
        if q in DDP_CLASSES:
            self._unknown_call(node, args, kwargs)
            return ddp_model(node)
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
                self.record_write("inplace_kw", node, x, node.args[0], method=short, stmt_level=stmt_level,
                                  op_text=f"F.{short}")
                if short in T.FUNCTIONAL_OUTPUT_SAVING_WHEN_INPLACE:
                    self.save(x, f"F.{short}", node, output=True)
                return x.view()
        if q in ("torch.nn.Parameter", "torch.nn.parameter.Parameter"):
            rg = next((k.value for k in node.keywords if k.arg == "requires_grad"), None)
            out = self.new(TENSOR, None)
            if rg is None or _is_true(rg):
                out.leaf = f"an nn.Parameter (line {node.lineno})"
            return out
        # nn.Linear(...), nn.Sequential(...) and friends: a module value
        if q.startswith("torch.nn.") and q.count(".") == 2 and short[:1].isupper():
            return Val(OTHER, module=self.fa.module_ctor(node, self.locals))
        if q in ("torch.utils.checkpoint.checkpoint", "torch.utils.checkpoint.checkpoint_sequential"):
            # checkpoint keeps its tensor inputs to rerun the forward at backward time
            for v in self._tensor_args(args[1:], kwargs):
                self.save(v, "checkpoint", node)
            return self.new(TENSOR, _min_origin(*(v.origin for v in args)))
        out_kw = next((k for k in node.keywords if k.arg == "out"), None)
        if out_kw is not None and "out" in kwargs and kwargs["out"].obj is not None:
            # torch.clamp(a, 0, 1, out=a): writes `a` in place
            self.mark_tensor(kwargs["out"])
            self.record_write("out", node, kwargs["out"], out_kw.value, method=q, stmt_level=stmt_level,
                              op_text=f"`{_display(q)}(..., out={ast.unparse(out_kw.value)})`")
            return kwargs["out"].view()
        if q.startswith(T.TORCH_NON_TENSOR_PREFIXES):
            return _OTHER
        display = _display(q)
        tensors = self._tensor_args(args, kwargs)
        if q == "torch.from_numpy" and args and node.args:
            out = self.new(TENSOR, None, nograd=True)
            self._share_numpy(node.args[0], args[0], out, node)
            return out
        if q in _FACTORIES or q.endswith("_like"):
            rg = next((k.value for k in node.keywords if k.arg == "requires_grad"), None)
            out = self.new(TENSOR, None, nograd=rg is None or (isinstance(rg, ast.Constant) and not rg.value))
            if _is_true(rg):
                out.leaf = f"created with requires_grad=True (line {node.lineno})"
            return out
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
        if recv.ddp is not None:
            if m == "forward":
                return self._ddp_forward(node, recv.ddp, args, kwargs)
            if m in _MODULE_SELF_METHODS:
                return recv  # model.train(), model.to(device): the same DDP model
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
                self.steps.append((self.index, node, ast.unparse(node), tuple(self.branch)))
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
        if m == "append" and recv.items is not None and len(args) == 1 and not node.keywords \
                and not isinstance(node.args[0], ast.Starred):
            # feats = []; feats.append(lat0(c0)): the list remembers what it holds
            n = sum(1 for k in recv.items if isinstance(k, int) and k >= 0)
            if getattr(self, "loop_depth", 0):
                recv.items = None  # appended in a loop: positions depend on the iteration count
            elif all(i in recv.items for i in range(n)):
                recv.items[n] = args[0]
                for i in range(n + 1):
                    recv.items[i - n - 1] = recv.items[i]
            if args[0].obj is not None:
                args[0].obj.escaped = True
            return _OTHER
        if recv.module is not None and m in _MODULE_SELF_METHODS:
            return recv  # nn.Sequential(...).double(), module.to(device), .eval(): the same module
        if m == "apply" and rd is not None and self.fa.index is not None and rd in self.fa.index.autograd:
            return self._apply_function_class(node, self.fa.index.autograd[rd], args, rd)
        if recv.kind == OTHER or recv.obj is None:
            if rd in ("self", "cls") or recv.module is not None:
                if rd in ("self", "cls") and self.cls is not None and self.has_torch:
                    self._apply_summary(node, self.fa.function_summary(m, self.cls.name), args, kwargs,
                                        f"{rd}.{m}", stmt_level)
                return self._unknown_call(node, args, kwargs)
            return _OTHER  # numpy arrays, lists, strings stay what they are
        if not self.has_torch:
            return self._unknown_call(node, args, kwargs)
        if m in T.INPLACE_METHODS and not m.startswith("_"):
            if recv.via_data:
                self.record_write("data", node, recv, data_owner(func.value), method=m, data_form="method",
                                  stmt_level=stmt_level, evidence=True)
            else:
                self.mark_tensor(recv)
                self.record_write("method", node, recv, func.value, method=m, stmt_level=stmt_level, op_text=f".{m}()")
            if m[:-1] in T.OUTPUT_SAVING_METHODS:
                self.save(recv, f".{m}()", node, output=True)
            if not all(a.nograd or a.obj is None for a in args):
                recv.nograd = False  # writing a grad-requiring value makes it require grad
            return recv.view()
        if m == "split" and (not node.args or (isinstance(node.args[0], ast.Constant)
                                               and isinstance(node.args[0].value, str)) or "sep" in kwargs):
            return _OTHER  # str.split: Tensor.split always takes a size
        if m in T.VIEW_METHODS:
            self.mark_tensor(recv)
            if m == "detach":  # shares the version counter, but is no leaf and needs no grad
                return recv.view(nograd=True, leaf=None, multi_view=None)
            if m in _MULTI_VIEW:
                return recv.view(multi_view=f"`.{m}()` (line {node.lineno})")
            return recv.view()
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
        if recv.kind == TENSOR and recv.nograd and all(v.nograd or v.obj is None
                                                       for v in list(args) + list(kwargs.values())):
            # another Tensor method of tensors that cannot require grad: neither can its result
            self._unknown_call(node, args, kwargs)
            return self.new(TENSOR, recv.origin, nograd=True)
        return self._unknown_call(node, args, kwargs)

    def _call_module(self, node: ast.Call, info: ModuleInfo, args: list, stmt_level: bool, text: str) -> Val:
        x = args[0] if args else None
        label = f"{text} ({info.label})"
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
        has_params = info.cls in _PARAM_MODULES or any(i is not None and i.cls in _PARAM_MODULES for i in info.items)
        if info.saves_input:
            self.save(x, label, node, grad_from=None if not has_params else [Val(TENSOR, Obj(TENSOR))])
        out = self.new(TENSOR, self.index, nograd=x.nograd and not has_params)
        if info.saves_output:
            self.save(out, label, node, output=True, grad_from=[x])
        return out

    def _ddp_forward(self, node: ast.Call, model, args: list, kwargs: dict) -> Val:
        """``model(x)`` of a ``DistributedDataParallel`` model (see ``ddp``)."""
        self._unknown_call(node, args, kwargs)
        self.fwd_seq += 1
        f = record_forward(model, node, self.fwd_seq, tuple(self.branch), bool(self.no_grad), bool(self.no_sync))
        return Val(MAYBE, Obj(MAYBE), origin=self.index, nograd=bool(self.no_grad), fwd=(f,) if f.grad else ())

    def _backward(self, node: ast.AST, loss_node: ast.AST, loss: Optional[Val]) -> None:
        if loss is None:
            if isinstance(loss_node, ast.Name) and loss_node.id in self.env:
                loss = self.env[loss_node.id].val
            else:
                return
        if loss.fwd:
            found = hazard(loss, node, tuple(self.branch))
            if found is not None:
                self.facts.ddp_hazards.append(found)
        if loss.origin is None:
            return
        here = tuple(self.branch)
        for idx, step, text, branch in reversed(self.steps):  # the step closest to the backward
            if loss.origin < idx < self.index and not exclusive(branch, here):
                label = ast.unparse(loss_node) if hasattr(ast, "unparse") else "loss"
                origin_line = self.index_lines.get(loss.origin, 0)
                self.facts.step_hazards.append(StepHazard(node, label, origin_line, step.lineno, text, step))
                return


# Ops whose result is an integer or boolean tensor: no gradient flows back through them.
_INT_RESULT = frozenset({"argmax", "argmin", "argsort", "argwhere", "nonzero", "count_nonzero", "bucketize",
                         "searchsorted", "isnan", "isinf", "isfinite", "isclose", "eq", "ne", "lt", "le", "gt", "ge"})


def _getattr_self_default(node: ast.Call) -> Optional[ast.Name]:
    """``t`` for ``getattr(t, "name", lambda: t)()``: the method's result or ``t`` itself."""
    f = node.func
    if (node.args or node.keywords or not isinstance(f, ast.Call) or not isinstance(f.func, ast.Name)
            or f.func.id != "getattr" or len(f.args) != 3 or f.keywords):
        return None
    obj, _name, default = f.args
    if (isinstance(obj, ast.Name) and isinstance(default, ast.Lambda) and not default.args.args
            and isinstance(default.body, ast.Name) and default.body.id == obj.id):
        return obj
    return None


_FACTORIES = frozenset(f"torch.{n}" for n in (
    "zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "eye", "rand", "randn",
    "randint", "randperm", "tensor", "as_tensor", "from_numpy", "asarray", "tril_indices", "triu_indices",
    "empty_strided", "bernoulli", "multinomial", "normal"))
_TENSOR_KWARGS = frozenset({"input", "other", "weight", "bias", "mat1", "mat2", "tensor", "query", "key", "value",
                            "target", "exponent", "tensors"})
_MODULE_SELF_METHODS = frozenset({"double", "float", "half", "bfloat16", "to", "cuda", "cpu", "train", "eval",
                                  "requires_grad_", "zero_grad"})
_MULTI_VIEW = frozenset({"split", "chunk", "unbind", "tensor_split", "split_with_sizes", "hsplit", "vsplit",
                         "dsplit"})
_INT_CASTS = frozenset({"long", "int", "bool", "short", "byte", "char"})
_INT_DTYPES = frozenset({"long", "int", "int64", "int32", "int16", "int8", "uint8", "bool"})
_PARAM_MODULES = frozenset({"Linear", "Bilinear", "LazyLinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                            "ConvTranspose2d", "ConvTranspose3d", "LazyConv1d", "LazyConv2d", "LazyConv3d",
                            "LayerNorm", "GroupNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                            "SyncBatchNorm", "LSTM", "GRU", "RNN", "MultiheadAttention", "PReLU"})
