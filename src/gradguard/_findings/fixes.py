"""The FIX sentence for a write, in the user's own names when the source line allows it."""
from __future__ import annotations

import re
from typing import Optional

from gradguard._findings.twins import twin_method, twin_statement

_NAME = r"[A-Za-z_][\w\.]*(?:\[[^\]]*\])?"


def _strip_comment(src: str) -> str:
    return src.split("#", 1)[0].strip()


def _balanced(text: str, open_at: int) -> int:
    """Index just past the parenthesis closing the one at ``open_at`` (or len(text))."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def call_on(src: str) -> str:
    """The call a source line makes, as written: ``out = trainer.step(x)`` ->
    ``trainer.step(x)``; the stripped line if it is not one call."""
    src = _strip_comment(src)
    m = re.match(rf"^(?:[\w\.\[\], ]+\s*=(?!=)\s*)?({_NAME})\(", src)
    if m and _balanced(src, m.end(1)) == len(src):
        return src[m.start(1):]
    return src


def backward_call(src: Optional[str]) -> Optional[str]:
    """The backward call on a line, in the user's names: ``loss.backward()``,
    ``self.manual_backward(g_loss)``, ``accelerator.backward(loss)``."""
    line = _strip_comment(src or "")
    m = re.search(rf"({_NAME}backward)\(", line)
    return line[m.start(1):_balanced(line, m.end(1))] if m else None


def move_after(call: str, backward: Optional[str], what: str) -> str:
    """Move a call whose code writes a saved tensor (an optimizer step, a weight copy)
    after the backward that needs it."""
    after = f"`{backward}`" if backward else "the `backward()` that needs the saved tensor"
    return f"move `{call}` after {after}, or recompute the forward after it: {what}"


def for_write(op: str, source: Optional[str], *, via_optimizer: bool, alias: Optional[str],
              backward_source: Optional[str], saver_op: Optional[str],
              library_source: Optional[str] = None) -> str:
    """One sentence telling the user what to write instead of the write ``op`` on the
    source line ``source`` (None when the write has no user frame). ``library_source``:
    the innermost line of library code between the user's line and the write, when the
    write happened inside a library the user's line called."""
    src = _strip_comment(source) if source else ""
    method = op.rsplit(".", 1)[-1]
    if src and library_source is not None:
        inner = re.sub(r"^(?:return|yield|await)\s+", "", _strip_comment(library_source))
        what = ("the optimizer step inside it" if via_optimizer else "the library code it calls")
        return move_after(call_on(src), backward_call(backward_source),
                          f"{what} (`{inner}`) "
                          + ("updated parameters that backward still needs" if via_optimizer
                             else f"writes (`{op}`) into a tensor that backward still needs"))
    if src and method == "copy_" and alias != ".data" and ".data" not in src:
        # load_state_dict, an EMA's copy_to, p.copy_(w): there is no out-of-place copy_.
        return move_after(call_on(src), backward_call(backward_source),
                          f"it copies new values (`{op}`) into a tensor that backward still "
                          "needs")
    if via_optimizer:
        opt = re.search(rf"({_NAME})\.step\(", src)
        loss = re.search(rf"({_NAME})\.backward\(", backward_source or "")
        step = f"`{opt.group(1)}.step()`" if opt else "the optimizer step"
        if loss:
            return (f"call `{loss.group(1)}.backward()` before {step}, or recompute "
                    f"`{loss.group(1)}` after it: the step updated parameters that "
                    f"`{loss.group(1)}`'s graph saved")
        return (f"run the backward that needs these parameters before {step}, or redo "
                "the forward after the step")
    if alias == ".data" or ".data" in src:
        return ("do not write through `.data` (it hides the write from autograd): do the "
                "update after `backward()` under `with torch.no_grad():` on the tensor "
                "itself, or clone before writing")
    if op in _AUG_SYMBOLS:
        m = re.match(rf"({_NAME})\s*{re.escape(op)}\s*(.+)$", src)
        if m:
            x, rhs = m.group(1), m.group(2)
            return f"write `{x} = {x} {op[:-1]} {rhs}` instead of `{x} {op} {rhs}`"
        return f"use the out-of-place form (`x = x {op[:-1]} y`) instead of `x {op} y`"
    if "inplace=True" in src:
        return ("drop `inplace=True` on this line: the in-place activation overwrote a "
                "tensor that " + (f"`{saver_op}`" if saver_op else "an earlier op")
                + " saved for backward")
    if op.endswith("__setitem__"):
        m = re.match(rf"({_NAME}?)\[", src)
        x = m.group(1) if m else "x"
        return (f"clone before writing (`{x} = {x}.clone()` on the line before), or build "
                f"the result out of place (e.g. `torch.where`, `{x}.index_put(...)`)")
    if op.endswith("(out=)"):
        dropped = without_out(src)
        if dropped is not None:
            return f"write `{dropped}` instead of `{src}`"
        return "drop `out=` and assign the result to a new tensor"
    if method.endswith("_") and not method.startswith("_"):
        # The one table of out-of-place twins, shared with the lint fixes and
        # `gradguard fix --from-report`: it never names a method Tensor does not have.
        twin = twin_statement(src, op) if src else None
        if twin is not None:
            return f"write `{twin}` instead of `{src}`"
        if src and source is not None and method in _ACTIVATIONS:
            return (f"this line runs an in-place `{method}` (probably a module built with "
                    "`inplace=True`): construct it without `inplace=True`")
        plain = twin_method(method)
        if plain is not None:
            return f"use the out-of-place `{plain}` (assign its result), or clone the tensor first"
        return (f"`{method}` has no out-of-place method: clone the tensor first "
                f"(`x = x.clone()`) and `{method}` the clone, or build a new tensor")
    return "clone the tensor before writing into it (`x = x.clone()`), or write out of place"


def without_out(src: str) -> Optional[str]:
    """The out-of-place form of a one-call line writing through ``out=`` into a name:
    ``torch.clamp(a, 0, 1, out=a)`` -> ``a = torch.clamp(a, 0, 1)``; None for other lines."""
    src = _strip_comment(src)
    m = re.match(rf"^(?:{_NAME}\s*=(?!=)\s*)?({_NAME})\(", src)
    if m is None or _balanced(src, m.end(1)) != len(src):
        return None
    args = src[m.end(1) + 1:-1]
    # A plain name only: ``out=c[0]`` or ``out=self.w`` rebound would be another write
    # (or a parameter assignment that raises).
    out = re.search(r",\s*out\s*=\s*([A-Za-z_]\w*)\s*(?=,|$)", args)
    if out is None:
        return None
    rest = (args[:out.start()] + args[out.end():]).strip()
    return f"{out.group(1)} = {m.group(1)}({rest})"


def clone_where_made(var: str, made: Optional[str], before_write: bool = False) -> str:
    """How to clone ``var`` where it is made: ``y = lin(x).clone()`` for a one-name
    assignment line ``y = lin(x)``, else ``var = var.clone()`` before writing it (or, with
    ``before_write``, right after it is made: before a write into its base)."""
    src = _strip_comment(made or "")
    m = re.match(rf"^{re.escape(var)}\s*=(?!=)\s*(.+)$", src)
    if m:
        return f"clone it where it is made (`{var} = {m.group(1)}.clone()`)"
    when = "right after it is made, before that write" if before_write else "before writing"
    return f"clone it {when} (`{var} = {var}.clone()`)"


def for_leaf_view_write(op: str, source: Optional[str], what: str) -> Optional[str]:
    """The FIX for an augmented assignment into an indexed view of a leaf (``b[:, 4] += v``
    with ``b`` a view of a parameter), where ``b[:, 4] = b[:, 4] + v`` would be the same
    in-place write; None for other lines."""
    src = _strip_comment(source) if source else ""
    m = re.match(rf"({_NAME})\s*{re.escape(op)}\s*(.+)$", src) if op in _AUG_SYMBOLS else None
    if m is None or "[" not in m.group(1):
        return None
    x, rhs = m.group(1), m.group(2)
    return (f"`{x} {op} {rhs}` writes into {what} in place (and so would "
            f"`{x} = {x} {op[:-1]} {rhs}`): for a deliberate change of its values, do it under "
            f"`with torch.no_grad():` (`with torch.no_grad(): {x} {op} {rhs}`); otherwise build "
            "the new tensor out of place (`torch.where`, `torch.cat`, `.index_put(...)` without "
            "the underscore) and use it instead of writing into the view")


_AUG_SYMBOLS = {"+=", "-=", "*=", "/=", "//=", "%=", "**=", "&=", "|=", "^=", "<<=", ">>="}
_ACTIVATIONS = {
    "relu_", "relu6_", "leaky_relu_", "elu_", "selu_", "celu_", "gelu_", "silu_", "mish_",
    "hardtanh_", "hardswish_", "hardsigmoid_", "threshold_", "rrelu_", "sigmoid_", "tanh_",
    "dropout_", "feature_dropout_", "alpha_dropout_", "feature_alpha_dropout_",
}

LEAF_FIX = (
    "a leaf that requires grad (a parameter or an input) must not be written in place "
    "while autograd tracks it: write out of place (`x = x + y` makes a new tensor), or, "
    "for a deliberate update such as a parameter step, do it under `with torch.no_grad():`"
)
MULTI_VIEW_FIX = (
    "clone the piece before writing (`a = a.clone()`), or compute the new value out of "
    "place: outputs of split/chunk/unbind share one backward node and cannot be modified "
    "in place"
)
INFERENCE_FIX = (
    "clone the tensor outside inference mode before writing (`t = t.clone()`), or create "
    "it under `torch.no_grad()` instead of `torch.inference_mode()`"
)
