"""The out-of-place twin of an in-place tensor write: the one place that knows it.

Torch-free (stdlib only).  Used by ``gradguard lint``/``gradguard fix`` (through
libcst), by ``gradguard fix --from-report`` and by the runtime's FIX sentence.

Three kinds of twin, in order of preference:

1. **Method twin** -- ``x.add_(y)`` -> ``x = x.add(y)``.  ``METHOD_TWINS`` lists every
   in-place ``torch.Tensor`` method whose out-of-place method computes the same
   values (up to dtype promotion: ``float16 += float32`` stays float16 in place,
   ``x.add(y)`` is float32).  Every name on the right exists on ``torch.Tensor``
   (``tests/lint/test_twins.py`` checks it against real torch).

2. **Fresh-buffer twin** -- methods that overwrite every element whatever the old
   values were (``zero_``, ``fill_``, ``copy_`` and the random fills) have *no*
   out-of-place method: there is no ``Tensor.zero``, ``Tensor.copy``,
   ``Tensor.normal``.  Their honest twin does the same write into a fresh tensor
   of the same shape, dtype, device and layout::

       x.zero_()            -> x = torch.zeros_like(x)
       x.fill_(0.5)         -> x = torch.full_like(x, 0.5)      (a number literal)
       x.fill_(v)           -> x = torch.empty_like(x).fill_(v)   (v may be a tensor)
       x.copy_(src)         -> x = torch.empty_like(x).copy_(src)
       x.normal_(0, 0.02)   -> x = torch.empty_like(x).normal_(0, 0.02)

   ``empty_like(x).copy_(src)`` keeps everything ``copy_`` does (broadcasting
   ``src``, casting to ``x``'s dtype and device, the gradient to ``src``) -- which
   ``src.clone()`` would not.  ``empty_like(x).normal_(...)`` draws the same
   random numbers as ``x.normal_(...)`` (same shape, dtype, device, generator).
   One difference remains and makes such a rewrite *unsafe*: the fresh tensor does
   not require grad where ``x`` did (the gradient to ``x``'s old values was zero
   anyway, but a backward whose only path runs through it then raises).

3. **Function twin** -- ``torch.relu_(x)`` -> ``x = torch.relu(x)``,
   ``F.relu(x, inplace=True)`` -> ``x = F.relu(x)``, ``torch.add(a, b, out=a)`` ->
   ``a = torch.add(a, b)``.

No twin (``None``): item assignment ``x[i] = v`` / ``x[i] += v`` (the one-line
out-of-place forms, ``index_put``/``torch.where``, depend on the index), writes
through ``.data`` (the fix there is to move the write after ``backward()``, not to
rewrite it), ``nn.init.*_`` (their out-of-place forms do not exist), metadata
operations (``resize_``, ``set_``, ``detach_``, ``requires_grad_``), and statements
whose written tensor is not a plain name or attribute.  Callers then fall back to
advice such as cloning first.
"""
from __future__ import annotations

import ast
from typing import Optional

# -- 1. in-place method -> out-of-place method -------------------------------
_SAME_NAME = """abs_ absolute_ acos_ acosh_ add_ addbmm_ addcdiv_ addcmul_ addmm_ addmv_ addr_
    arccos_ arccosh_ arcsin_ arcsinh_ arctan2_ arctan_ arctanh_ asin_ asinh_ atan2_ atan_
    atanh_ baddbmm_ bitwise_and_ bitwise_left_shift_ bitwise_not_ bitwise_or_
    bitwise_right_shift_ bitwise_xor_ ceil_ clamp_ clamp_max_ clamp_min_ clip_
    copysign_ cos_ cosh_ cumprod_ cumsum_ deg2rad_ digamma_ div_ divide_ eq_ erf_ erfc_
    erfinv_ exp2_ exp_ expm1_ fix_ float_power_ floor_ floor_divide_ fmod_ frac_ gcd_ ge_
    greater_ greater_equal_ gt_ heaviside_ hypot_ i0_ igamma_ igammac_ index_add_
    index_copy_ index_fill_ index_put_ index_reduce_ lcm_ ldexp_ le_ lerp_ less_
    less_equal_ lgamma_ log10_ log1p_ log2_ log_ logical_and_ logical_not_ logical_or_
    logical_xor_ logit_ lt_ masked_fill_ masked_scatter_ mul_ multiply_ mvlgamma_
    nan_to_num_ ne_ neg_ negative_ nextafter_ not_equal_ polygamma_ pow_ put_ rad2deg_
    reciprocal_ relu_ remainder_ renorm_ round_ rsqrt_ scatter_ scatter_add_
    scatter_reduce_ sgn_ sigmoid_ sign_ sin_ sinc_ sinh_ sqrt_ square_ sub_ subtract_
    tan_ tanh_ tril_ triu_ true_divide_ trunc_ xlogy_ sinc_ conj_physical_""".split()
METHOD_TWINS: dict[str, str] = {m: m[:-1] for m in _SAME_NAME}

# -- 2. methods that overwrite every element: twin on a fresh buffer -----------
FRESH_BUFFER: frozenset[str] = frozenset(
    {"zero_", "fill_", "copy_", "normal_", "uniform_", "random_", "exponential_", "geometric_",
     "cauchy_", "log_normal_", "bernoulli_"})

# In-place writes with no faithful one-line twin.
NO_TWIN_METHODS: frozenset[str] = frozenset(
    {"fill_diagonal_", "map_", "apply_", "map2_", "set_", "resize_", "resize_as_", "as_strided_",
     "detach_", "requires_grad_", "share_memory_", "squeeze_", "unsqueeze_", "t_", "transpose_",
     "swapaxes_", "swapdims_", "index_put_with_alias_"})

# Writes to a tensor's values (the metadata operations in NO_TWIN_METHODS are not).
INPLACE_METHODS: frozenset[str] = frozenset(METHOD_TWINS) | FRESH_BUFFER | frozenset(
    {"fill_diagonal_", "map_", "apply_", "map2_", "set_"})

# -- 3. in-place functions ------------------------------------------------------
_TORCH_FUNCS = """abs_ acos_ acosh_ addmv_ arccos_ arccosh_ arcsin_ arcsinh_ arctan_ arctanh_
    asin_ asinh_ atan_ atanh_ ceil_ celu_ clamp_ clamp_max_ clamp_min_ clip_ cos_ cosh_
    deg2rad_ erf_ erfc_ exp2_ exp_ expm1_ fix_ floor_ frac_ gcd_ i0_ lcm_ ldexp_ log10_
    log1p_ log2_ log_ logit_ nan_to_num_ neg_ negative_ rad2deg_ reciprocal_ relu_ round_
    rrelu_ rsqrt_ selu_ sigmoid_ sin_ sinc_ sinh_ sqrt_ square_ tan_ tanh_ threshold_
    trunc_ xlogy_""".split()
_FUNCTIONAL_FUNCS = "celu_ elu_ hardtanh_ leaky_relu_ relu_ rrelu_ selu_ threshold_".split()
FUNCTION_TWINS: dict[str, str] = {
    **{f"torch.{n}": f"torch.{n[:-1]}" for n in _TORCH_FUNCS},
    **{f"torch.nn.functional.{n}": f"torch.nn.functional.{n[:-1]}" for n in _FUNCTIONAL_FUNCS},
}

# torch.nn.functional functions with an ``inplace`` parameter -> its positional index.
FUNCTIONAL_INPLACE_ARG: dict[str, int] = {
    "relu": 1, "relu6": 1, "selu": 1, "silu": 1, "mish": 1, "hardsigmoid": 1,
    "hardswish": 1, "elu": 2, "celu": 2, "leaky_relu": 2, "threshold": 3,
    "hardtanh": 3, "rrelu": 4, "dropout": 3, "dropout1d": 3, "dropout2d": 3,
    "dropout3d": 3, "alpha_dropout": 3, "feature_alpha_dropout": 3,
}

# nn modules accepting ``inplace`` -> its positional index (``nn.LeakyReLU(0.2, True)``).
MODULE_INPLACE_ARG: dict[str, int] = {
    "ReLU": 0, "ReLU6": 0, "SELU": 0, "SiLU": 0, "Mish": 0, "Hardsigmoid": 0, "Hardswish": 0,
    "ELU": 1, "CELU": 1, "LeakyReLU": 1, "Dropout": 1, "Dropout1d": 1, "Dropout2d": 1, "Dropout3d": 1,
    "AlphaDropout": 1, "FeatureAlphaDropout": 1, "Hardtanh": 2, "RReLU": 2, "Threshold": 2,
}

_AUG = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
        ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<",
        ast.RShift: ">>"}
# Binding strength of binary operators (higher binds tighter), as in the grammar.
_PREC = {ast.BitOr: 1, ast.BitXor: 2, ast.BitAnd: 3, ast.LShift: 4, ast.RShift: 4, ast.Add: 5,
         ast.Sub: 5, ast.Mult: 6, ast.Div: 6, ast.FloorDiv: 6, ast.Mod: 6, ast.MatMult: 6, ast.Pow: 8}


def twin_method(method: str) -> Optional[str]:
    """The out-of-place ``torch.Tensor`` method computing what ``method`` writes
    (``"add_" -> "add"``); None where none exists (``zero_``, ``copy_``, ``fill_``,
    the random fills, ``set_``...)."""
    return METHOD_TWINS.get(method)


def twin_function(qualname: str) -> Optional[str]:
    """``"torch.relu_" -> "torch.relu"``; ``"torch.nn.functional.elu_" -> ...elu``;
    None for ``torch.nn.init.*_`` and anything unknown."""
    return FUNCTION_TWINS.get(qualname)


def fresh_buffer_expr(method: str, target: str, args: str, torch_name: str = "torch",
                      arg_nodes: Optional[list[ast.expr]] = None) -> Optional[str]:
    """The expression of a fresh-buffer twin (kind 2 above) in source text, or None.

    ``target`` is the written tensor's source text, ``args`` the call's argument
    text; ``arg_nodes`` (the parsed arguments) lets ``fill_(0.5)`` become ``full_like``."""
    if method not in FRESH_BUFFER:
        return None
    if method == "zero_" and not args.strip():
        return f"{torch_name}.zeros_like({target})"
    if method == "fill_" and arg_nodes is not None and len(arg_nodes) == 1 and _is_number(arg_nodes[0]):
        return f"{torch_name}.full_like({target}, {args.strip()})"
    return f"{torch_name}.empty_like({target}).{method}({args})"


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def augassign_symbol(op: ast.operator) -> Optional[str]:
    """``"+"`` for ``+=``; None for ``@=`` (not an in-place write on tensors)."""
    return _AUG.get(type(op))


def needs_parens(rhs: ast.AST, op: ast.operator) -> bool:
    """Whether ``x OP rhs`` needs parentheses around ``rhs`` to keep ``x OP= rhs``'s meaning.

    Equal precedence needs them too: ``x -= a - b`` is ``x - (a - b)``, and for floats
    ``x + (a + b)`` and ``x + a + b`` round differently."""
    if isinstance(rhs, (ast.BoolOp, ast.Compare, ast.IfExp, ast.Lambda, ast.NamedExpr)):
        return True
    if isinstance(rhs, ast.UnaryOp):
        return isinstance(rhs.op, ast.Not) or type(op) is ast.Pow
    if isinstance(rhs, ast.BinOp):
        return _PREC.get(type(rhs.op), 0) <= _PREC.get(type(op), 0)
    return False


def inplace_keyword(call: ast.Call) -> Optional[int]:
    """Index into ``call.keywords`` of ``inplace=True``, or ``-1 - i`` for a positional
    ``True`` at ``call.args[i]`` in a known functional's ``inplace`` slot; None if absent."""
    for i, k in enumerate(call.keywords):
        if k.arg == "inplace" and isinstance(k.value, ast.Constant) and k.value.value is True:
            return i
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    pos = FUNCTIONAL_INPLACE_ARG.get(name)
    if pos is not None and len(call.args) > pos:
        a = call.args[pos]
        if isinstance(a, ast.Constant) and a.value is True:
            return -1 - pos
    return None


# -- twin_statement ----------------------------------------------------------------
def dotted(node: ast.AST) -> Optional[str]:
    """``a.b.c`` for a chain of attribute accesses on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_place(node: ast.AST) -> bool:
    """A name or attribute chain that can be rebound (not ``x.data``, not ``x[i]``)."""
    d = dotted(node)
    return d is not None and not d.endswith(".data") and ".data." not in d


def _qualify(func: ast.AST) -> Optional[str]:
    d = dotted(func)
    if d is None:
        return None
    head, _, rest = d.partition(".")
    base = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional"}.get(head)
    if base is None:
        return None
    return f"{base}.{rest}" if rest else base


def _parse_line(source: str) -> Optional[ast.stmt]:
    text = source.strip()
    if not text:
        return None
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    if len(tree.body) != 1:
        return None
    return tree.body[0]


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or ast.unparse(node)

    def args(self, call: ast.Call, drop_kw: Optional[str] = None, drop_pos: Optional[int] = None) -> str:
        parts = [self(a) for i, a in enumerate(call.args) if i != drop_pos]
        parts += [(f"{k.arg}={self(k.value)}" if k.arg else f"**{self(k.value)}")
                  for k in call.keywords if k.arg != drop_kw]
        return ", ".join(parts)


def twin_statement(source: str, op: str = "", *, torch_name: str = "torch") -> Optional[str]:
    """The out-of-place statement for one source line of an in-place write.

    ``source`` is the line as a runtime report or an editor shows it (leading
    indentation and a trailing comment are fine); ``op`` is the op the runtime
    recorded (``"Tensor.add_"``, ``"+="``, ``"Tensor.__setitem__"``, ``"torch.relu_"``,
    ``"torch.add(out=)"``) and only picks the write when the line has several.
    Returns e.g. ``"h = h.mul(2)"`` for ``"h.mul_(2)"``, or None when no faithful
    one-line twin exists (see the module docstring).  ``torch_name`` is what the
    file binds ``torch`` to, for the fresh-buffer twins (``torch.zeros_like``)."""
    stmt = _parse_line(source)
    if stmt is None:
        return None
    text = _Text(source.strip())
    if op.endswith("__setitem__"):
        return None
    if isinstance(stmt, ast.AugAssign):
        sym = augassign_symbol(stmt.op)
        if sym is None or not _is_place(stmt.target):
            return None
        t, rhs = text(stmt.target), text(stmt.value)
        if needs_parens(stmt.value, stmt.op):
            rhs = f"({rhs})"
        return f"{t} = {t} {sym} {rhs}"
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        return _twin_call_statement(stmt.value, text, op, torch_name)
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.value, ast.Call):
        # h = F.relu(h, inplace=True): the result goes back into the written name
        call = stmt.value
        target = text(stmt.targets[0])
        if _is_place(stmt.targets[0]) and call.args and text(call.args[0]) == target:
            twin = _twin_call_statement(call, text, op, torch_name)
            if twin is not None and twin.startswith(f"{target} = "):
                return twin
        # y = x.mul(2).add_(1): an in-place method on a temporary
        f = call.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call) and twin_method(f.attr):
            return f"{text(stmt.targets[0])} = {text(f.value)}.{twin_method(f.attr)}({text.args(call)})"
    return None


def _twin_call_statement(call: ast.Call, text: _Text, op: str, torch_name: str = "torch") -> Optional[str]:
    f = call.func
    out_kw = next((k for k in call.keywords if k.arg == "out"), None)
    if out_kw is not None:
        if not _is_place(out_kw.value):
            return None
        return f"{text(out_kw.value)} = {text(f)}({text.args(call, drop_kw='out')})"
    idx = inplace_keyword(call)
    if idx is not None:
        if not call.args or not _is_place(call.args[0]):
            return None
        if idx >= 0:
            rest = text.args(call, drop_kw="inplace")
        else:
            rest = text.args(call, drop_pos=-1 - idx)
        return f"{text(call.args[0])} = {text(f)}({rest})"
    q = _qualify(f)
    if q is not None and q in FUNCTION_TWINS:
        if not call.args or not _is_place(call.args[0]):
            return None
        name = text(f)[:-1]  # keep the user's spelling of the module: F.relu_ -> F.relu
        return f"{text(call.args[0])} = {name}({text.args(call)})"
    if isinstance(f, ast.Attribute) and q is None:
        recv = f.value
        if not _is_place(recv):
            return None
        r = text(recv)
        twin = twin_method(f.attr)
        if twin is not None:
            return f"{r} = {r}.{twin}({text.args(call)})"
        fresh = fresh_buffer_expr(f.attr, r, text.args(call), torch_name,
                                  arg_nodes=list(call.args) if not call.keywords else None)
        if fresh is not None:
            return f"{r} = {fresh}"
    return None


__all__ = ["dotted", "twin_method", "twin_function", "twin_statement", "fresh_buffer_expr", "augassign_symbol",
           "needs_parens", "inplace_keyword", "METHOD_TWINS", "FRESH_BUFFER", "FUNCTION_TWINS",
           "FUNCTIONAL_INPLACE_ARG", "MODULE_INPLACE_ARG", "INPLACE_METHODS", "NO_TWIN_METHODS"]
