"""Where a tensor PyTorch refused to write came from, found where the error is raised.

The written tensor is looked up in the live user frames' locals (preferring the name the
writing line spells), and the line that made it is the last assignment to that name in
its function's source (`gradguard._core.sites.assignment_of`). The autograd graph says
the rest: the view op behind a view (its ``grad_fn``), the base it is a view of. Nothing
is recorded when tensors are created: all of it is asked at the error only.
"""
from __future__ import annotations

import linecache
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from gradguard._core import sites
from gradguard._core.names import module_path
from gradguard._findings.model import Frame, Origin
from gradguard._findings.nodes import forward_op

_HOOK_NODE = "BackwardHookFunctionBackward"


@dataclass
class Found:
    """What the frames and the graph said about the written tensor: its ORIGIN lines and
    the facts the FIX sentence needs (see `gradguard._findings.kinds.Facts`)."""

    origin: list[Origin] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    var: Optional[str] = None  # the user's variable for the tensor, when that names it best
    write: Optional[Frame] = None  # the earlier write into the view's base, when found


def _find(frames: list, source: str,
          match: Callable[[torch.Tensor], bool]) -> tuple[Optional[str], Any]:
    """(variable, frame) of the innermost frame holding a tensor that matches (preferring
    a name the writing line spells)."""
    for frame in frames:
        names = [var for var, value in frame.f_locals.items()
                 if isinstance(value, torch.Tensor) and match(value)]
        if names:
            spelled = [var for var in names if re.search(rf"\b{re.escape(var)}\b", source)]
            return (spelled or names)[0], frame
    return None, None


def leaf(t: torch.Tensor, name: Optional[str], frames: list, source: str) -> list[Origin]:
    """Where the written leaf (or view of a leaf) came from: the view it was written
    through and the line that made it, back to the parameter, or the leaf's creation
    line."""
    base = t._base if t._is_view() else None
    root_name = name if base is None else module_path(base)[0]
    if root_name is None and base is not None:
        root_name = name

    root_what = (f"parameter `{root_name}`" if root_name else None)
    out: list[Origin] = []
    if base is not None:
        var, frame = _find(frames, source, lambda v: v is t or (v._is_view() and v._base is base))
        made = sites.assignment_of(frame, var) if var is not None else None
        leaf_var = None
        if root_what is None:
            leaf_var, leaf_frame = _find(frames, source, lambda v: v is base)
            root_what = f"leaf `{leaf_var}`" if leaf_var else "a leaf that requires grad"
        out.append(Origin(f"view `{var}` of {root_what}" if var else f"view of {root_what}",
                          made))
        if leaf_var is not None:
            out.append(Origin(f"leaf `{leaf_var}` (requires grad)",
                              sites.assignment_of(leaf_frame, leaf_var)))
        return out
    if root_what is not None:
        return [Origin(root_what)]
    var, frame = _find(frames, source, lambda v: v is t)
    if var is None:
        return []
    return [Origin(f"leaf `{var}` (requires grad)", sites.assignment_of(frame, var))]


def _grad_fn(t: torch.Tensor) -> Any:
    """``t.grad_fn``, or None where reading it raises (a multi-output or custom Function
    view whose base was written in place: PyTorch raises on reading it)."""
    try:
        return t.grad_fn
    except RuntimeError:
        return None


def _hooked_module(frames: list, made: str) -> Optional[str]:
    """The variable (or ``self.<attr>``) the view-making line calls that is a module with
    a full backward hook, as spelled there."""
    for frame in frames:
        for var, value in frame.f_locals.items():
            candidates = [(var, value)]
            if var == "self" and isinstance(value, torch.nn.Module):
                candidates += [(f"self.{n}", m) for n, m in value.named_children()]
            for spelled, module in candidates:
                if (isinstance(module, torch.nn.Module) and module._backward_hooks
                        and getattr(module, "_is_full_backward_hook", False)
                        and re.search(rf"(?<![\w.]){re.escape(spelled)}\(", made)):
                    return spelled
    return None


# The ops returning several views, by the node they make (chunk is split's node).
_MULTI_VIEW_OPS = ("split", "chunk", "tensor_split", "hsplit", "vsplit", "dsplit", "unbind",
                   "split_with_sizes", "unsafe_split")


def _spelled(op: str, made: str) -> str:
    """The multi-view op as the making line spells it (``x.chunk(2)`` makes a Split
    node), else ``op``."""
    for name in _MULTI_VIEW_OPS:
        if re.search(rf"\b{name}\(", made):
            return name
    return op


def view(kind: str, t: torch.Tensor, frames: list, source: str, message: str) -> Found:
    """A view PyTorch will not let be written in place: an output of a view op returning
    several views (split, chunk, unbind), or a view a custom Function returned (a module's
    full backward hook is one: BackwardHookFunction). Names the view's variable, the line
    that made it, the op (or hook) behind it and its base; ``message`` is PyTorch's error
    (it says whether the base was written first, and which node made the view)."""
    base = t._base if t._is_view() else None
    var, frame = _find(frames, source, lambda v: v is t)
    if var is None:  # written through a temporary view of it (`a[0] = 3`): its base's views
        var, frame = _find(frames, source, lambda v: (
            base is not None and v._is_view() and v._base is base))
    value = frame.f_locals[var] if var is not None else t
    made = sites.assignment_of(frame, var) if var is not None else None
    base_var = None
    if base is not None:
        base_var, _ = _find(frames, source, lambda v: v is base and v is not value)
    node = _grad_fn(value)
    m = re.match(r"Output (\d+) of (\w+) is a view", message)
    node_name = node.name() if node is not None else (m.group(2) if m else None)
    nr = value.output_nr if node is not None else (int(m.group(1)) if m else None)
    base_written = "its base or another view of its base has been modified" in message
    facts: dict[str, Any] = {"view": var, "view_source": made.source if made else None,
                             "base": base_var, "base_written": base_written}
    of_base = f" of `{base_var}`" if base_var else ""
    name = f"view `{var}`" if var else "the view"
    if kind == "multi-output-view-inplace":
        op = (forward_op(node_name) or "") if node is not None else (node_name or "").lower()
        op = _spelled(op, made.source if made else "")
        facts["view_op"] = op or None
        what = (f"{name}{of_base}: output {nr} of {op}, which returns several views"
                if op else f"{name}{of_base}, one of several views of one op")
    elif node_name and node_name.startswith("BackwardHookFunction"):
        hooked = _hooked_module(frames, made.source) if made else None
        facts["hooked"] = hooked or ""
        who = f"`{hooked}`" if hooked else "a module"
        what = (f"{name}: the output of {who}, passed as a view through its full backward "
                "hook (BackwardHookFunction, from register_full_backward_hook)")
    else:
        fn = forward_op(node_name) or "a custom Function"
        facts["view_op"] = fn
        what = (f"{name}: output {nr} of custom autograd.Function `{fn}`, a view"
                + (f" of `{base_var}`" if base_var else "")
                + " (its forward returned a view of an input, or an input as-is)")
    found = Found([Origin(what, made)], facts)
    if base_written and frame is not None and made is not None:
        views = [v for v, value in frame.f_locals.items() if isinstance(value, torch.Tensor)
                 and value is not t and base is not None and value._is_view()
                 and value._base is base]
        hit = _earlier_write(frame, [n for n in (base_var, *views) if n], made.line)
        if hit is not None:
            facts["write_op"], found.write = hit
            facts["write_source"] = found.write.source
    return found


_BASE_WRITTEN = "its base or another view of its base has been modified inplace"


def refused_view(frames: list, source: str, message: str) -> Optional[torch.Tensor]:
    """The view PyTorch refused to use because its base was written in place after it was
    made: the tensor in the user's ``frames`` whose ``grad_fn`` cannot be read for that
    reason (the output PyTorch's ``message`` numbers, preferring a name the raising line
    spells)."""
    def refused(v: torch.Tensor) -> bool:
        if not v._is_view():
            return False
        try:
            _ = v.grad_fn
        except RuntimeError as exc:
            return _BASE_WRITTEN in str(exc)
        return False

    m = re.match(r"Output (\d+) of", message)
    var, frame = _find(frames, source, lambda v: refused(v) and m is not None
                       and v.output_nr == int(m.group(1)))
    if var is None:
        var, frame = _find(frames, source, refused)
    return frame.f_locals[var] if var is not None else None


def _earlier_write(frame: Any, names: list[str], made: int) -> Optional[tuple[str, Frame]]:
    """(op, line) of the first in-place write to one of ``names`` in ``frame``'s source
    after line ``made`` and before the line it is at: ``qkv.mul_(2)``, ``qkv += 1``,
    ``qkv[0] = 0``. Read from the source, at the error only."""
    code = frame.f_code
    for line in range(made + 1, frame.f_lineno):
        text = linecache.getline(code.co_filename, line).split("#", 1)[0]
        for name in names:
            n = re.escape(name)
            aug = re.match(rf"^\s*{n}\s*(\*\*|//|<<|>>|[-+*/%&|^@])=(?!=)", text)
            op = (aug.group(1) + "=" if aug else
                  "Tensor.__setitem__" if re.match(rf"^\s*{n}\[.*\]\s*=(?!=)", text) else None)
            method = re.search(rf"(?<![\w.]){n}(?:\[[^\]]*\])?\.([a-z]\w*_)\(", text)
            if op is None and method is not None:
                op = f"Tensor.{method.group(1)}"
            if op is not None:
                path = os.path.abspath(code.co_filename)
                return op, Frame(path, line, getattr(code, "co_qualname", code.co_name),
                                 linecache.getline(code.co_filename, line).strip(),
                                 library=sites.is_library_file(path))
    return None


def out_target(args: tuple, frames: list, source: str) -> tuple[Optional[torch.Tensor], Found]:
    """An ``out=`` call PyTorch refused because an argument requires grad: the argument
    (the ``out=`` tensor first, ``args`` lists it first) and where it came from."""
    t = next((a for a in args if isinstance(a, torch.Tensor) and a.requires_grad), None)
    if t is None:
        return None, Found()
    is_out = t is args[0]
    facts: dict[str, Any] = {"out_requires_grad": is_out}
    var, frame = _find(frames, source, lambda v: v is t)
    if t.grad_fn is None:  # a leaf: a parameter, or made with requires_grad=True
        name, _ = module_path(t)
        return t, Found(leaf(t, name, frames, source), facts, None if name else var)
    if var is None:
        return t, Found([], facts)
    made = sites.assignment_of(frame, var)
    op = forward_op(t.grad_fn.name())
    return t, Found([Origin(f"`{var}` (requires grad, made by {op})", made)], facts)
