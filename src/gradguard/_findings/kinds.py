"""The catalogue of runtime kinds: one entry per GGR code.

Each `RuntimeKind` is everything gradguard knows about one kind of finding: its stable
code and slug, its title, the PyTorch message it explains, its documentation (the sections
*What it does*, *Why is this bad?*, *Example*, *Fix*, as the lint rules have them), a
runnable example that produces it and its fixed twin (a meta test runs both), and the
builders of its two sentences -- the DETAIL (what happened) and the FIX (what to write
instead) -- from the `Facts` the runtime gathered. The runtime only gathers facts; what
they mean, in words, is decided here. Torch-free: `gradguard rule GGR101` and the docs
generator read this without importing torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from gradguard._findings import fixes


@dataclass(frozen=True)
class Facts:
    """What the runtime established about one finding, before any sentence is written."""

    kind: str
    what: str  # the tensor for people: "`model.head.weight`" or "f32[4,3] cpu v1"
    node: Optional[str] = None  # backward node that needed it, e.g. "MmBackward0"
    saver_op: Optional[str] = None  # forward op (or Function) that saved it
    label: Optional[str] = None  # ctx attribute / checkpoint label of the record
    version_saved: Optional[int] = None
    version_now: Optional[int] = None
    write_op: Optional[str] = None  # "Tensor.mul_", "+=", ... (None: no write seen)
    write_source: Optional[str] = None  # the writing line's source (None: no user frame)
    alias: Optional[str] = None  # ".data" when the write went through a .data alias
    via_optimizer: bool = False
    backward_source: Optional[str] = None  # the line that called backward, if known
    library_source: Optional[str] = None  # the library line that wrote, below write_source
    ctx_source: Optional[str] = None  # the Function's `ctx.<attr> = ...` line, if found
    compiled: bool = False  # no write seen, and torch.compile ran (its writes are unseen)
    repaired: bool = False  # protect() handed backward the bytes it kept
    pending: bool = False  # found at the write (when="write"), before any damage
    pytorch_error: Optional[str] = None  # first line of PyTorch's own error, if any
    # A view PyTorch refuses to write (GGR203, GGR205), found in the user's frames:
    view: Optional[str] = None  # its variable
    view_source: Optional[str] = None  # the line that made it
    view_op: Optional[str] = None  # the op or Function that made it ("split", "Scale")
    base: Optional[str] = None  # the variable of the tensor it is a view of
    base_written: bool = False  # PyTorch: its base (or another view of it) was written first
    hooked: Optional[str] = None  # a module's full backward hook made it ("" : module unknown)
    out_requires_grad: bool = False  # GGR206: the `out=` tensor itself requires grad
    # The write ran during backward: inside the backward (or a hook) of this node.
    backward_node: Optional[str] = None
    # ...in the recomputation of a reentrant checkpoint: its call's "file:line" and source.
    recompute_call: Optional[str] = None
    recompute_source: Optional[str] = None
    recompute_reentrant: bool = False  # use_reentrant=True (else the non-reentrant one)

    @property
    def moved(self) -> bool:
        return (self.version_saved is not None and self.version_now is not None
                and self.version_now != self.version_saved)

    @property
    def who(self) -> str:
        return self.node or self.label or "backward"


@dataclass(frozen=True)
class Example:
    """A runnable program for the docs and the meta test: ``source`` produces the kind
    under ``detect(**options)`` (raising ``raises`` if not None); ``fixed`` is its twin
    that produces nothing."""

    source: str
    fixed: str
    options: dict[str, Any] = field(default_factory=dict)
    raises: Optional[str] = None  # exception class name the buggy program ends with


@dataclass(frozen=True)
class RuntimeKind:
    code: str  # "GGR101": stable, people and tools grep for it
    slug: str  # "saved-tensor-mutated": the kind's name in reports and JSON
    title: str
    pytorch_message: Optional[str]  # the PyTorch message it explains (None: PyTorch is silent)
    what_it_does: str
    why_bad: str
    fix_advice: str
    example: Example
    detail: Callable[[Facts], str]
    fix: Callable[[Facts], str]

    @property
    def doc(self) -> str:
        """Markdown: What it does / Why is this bad? / Example / Fix."""
        pytorch = (f"PyTorch's own message: *{self.pytorch_message}*" if self.pytorch_message
                   else "Stock PyTorch says nothing: the gradient is silently wrong.")
        options = ", ".join(f"{k}={v!r}" for k, v in self.example.options.items())
        run = f"`gradguard.detect({options})`" if options else "`gradguard run` or `gradguard.detect()`"
        return (
            f"## What it does\n\n{self.what_it_does}\n\n{pytorch}\n\n"
            f"## Why is this bad?\n\n{self.why_bad}\n\n"
            f"## Example\n\nUnder {run}:\n\n```python\n{self.example.source.strip()}\n```\n\n"
            f"Use instead:\n\n```python\n{self.example.fixed.strip()}\n```\n\n"
            f"## Fix\n\n{self.fix_advice}\n"
        )

    def sentences(self, f: Facts) -> tuple[str, str]:
        """The DETAIL and the FIX, each followed by where the write ran when it ran during
        backward (a Function's backward, a hook, a reentrant checkpoint's recomputation)."""
        detail, fix = self.detail(f).rstrip("."), self.fix(f)
        if f.recompute_call:
            call = (f"`{fixes._strip_comment(f.recompute_source)}`" if f.recompute_source
                    else "the checkpoint call")
            how = ("a reentrant checkpoint (use_reentrant=True) runs its function twice, "
                   "under no_grad in forward (which saves nothing for backward) and again "
                   "during backward with grad enabled, where this write ran"
                   if f.recompute_reentrant else
                   "a non-reentrant checkpoint reruns its region during backward, when "
                   "backward first needs a tensor the region saved")
            return (f"{detail}; the write ran in the recomputation of {call} at "
                    f"{f.recompute_call}: {how}",
                    f"{fix}; that line runs again at backward, when {call} at "
                    f"{f.recompute_call} recomputes its region")
        if f.backward_node and not f.pending:
            return (f"{detail}; the write ran during backward, in the backward of "
                    f"{f.backward_node} (its Function's backward or a hook on it), while other "
                    "nodes, and any later backward through a retained graph "
                    "(retain_graph=True), still need the saved bytes",
                    f"{fix} in that backward (a backward may only write tensors it "
                    "allocated itself; `.clone()` one it was handed before writing it)")
        return self.detail(f), fix


# -- the sentences ------------------------------------------------------------------------
def _saved_detail(f: Facts) -> str:
    if f.repaired:
        return (f"{f.who} needs {f.what}, saved at version {f.version_saved}; a write "
                "overwrote its bytes, and gradguard.protect gave backward the copy it kept "
                "just before that write, so the gradient is as the program meant it")
    if f.pending:
        return (f"this write would overwrite {f.what}, saved for backward by "
                f"{f.saver_op or 'an earlier op'}; stopped before the write (when='write')")
    head = f"{f.who} needs {f.what}, saved at version {f.version_saved}; "
    if f.moved:
        return head + f"it is now at version {f.version_now}"
    why = ("the write went through `.data`, which has its own version counter"
           if f.alias == ".data" else
           "the write went through an alias with its own version counter, or a kernel that "
           "bumps none")
    return head + (f"its version did not move ({why}), so PyTorch would not notice and the "
                   "gradient is silently wrong")


_NOT_INTERCEPTED = (
    "the write was not intercepted (it ran inside C++ code, a raw aten op or a compiled "
    "region, or before gradguard started): bisect the writes to this tensor between its "
    "save site and this backward (a write gradguard sees is named in the report, and "
    "`gradguard run --when write` stops the program at it)")


def _compiled_fix(f: Facts) -> str:
    back = fixes.backward_call(f.backward_source)
    return ("no eager write to it was seen, and torch.compile ran: writes inside compiled "
            "regions are not intercepted, so a compiled in-place update (a compiled "
            "`opt.step()`, say) most likely changed it after it was saved; move that call "
            f"after {f'`{back}`' if back else 'the backward that needs it'}, or, to stop at "
            "the write, rerun with compilation off (`TORCHDYNAMO_DISABLE=1`) under "
            "`gradguard run --when write` (or `gradguard.detect(when=\"write\")`)")


def _write_fix(f: Facts) -> str:
    if f.write_op is None:
        return _compiled_fix(f) if f.compiled else _NOT_INTERCEPTED
    return fixes.for_write(f.write_op, f.write_source, via_optimizer=f.via_optimizer,
                           alias=f.alias, backward_source=f.backward_source,
                           saver_op=f.saver_op, library_source=f.library_source)


def _ctx_fix(f: Facts) -> str:
    fix = _write_fix(f)
    if f.write_op is None:
        return fix
    m = re.match(r"^\s*(\w+)\.(\w+)\s*=\s*([A-Za-z_]\w*)\s*(?:#.*)?$", f.ctx_source or "")
    if m:
        where = (f"in `{f.label.split(' ', 1)[0]}`" if f.label else "in the Function")
        ctx, _attr, value = m.groups()
        return (fix + f"; and {where}, replace `{(f.ctx_source or '').split('#', 1)[0].strip()}` "
                f"with `{ctx}.save_for_backward({value})` (read it back from "
                f"`{ctx}.saved_tensors` in backward) so PyTorch checks it")
    return (fix + "; and in the Function, keep tensors with `ctx.save_for_backward(...)` so "
            "PyTorch checks them")


def _leaf_fix(f: Facts) -> str:
    view = fixes.for_leaf_view_write(f.write_op or "", f.write_source, f.what)
    if f.kind == "leaf-view-inplace" and view is not None:
        return view
    specific = fixes.for_write(f.write_op or "", f.write_source, via_optimizer=False,
                               alias=None, backward_source=None, saver_op=None)
    return f"{specific}; {fixes.LEAF_FIX}"


def _view_fix(f: Facts, why: str, also: Optional[str] = None) -> str:
    """The FIX for a write into a view autograd cannot rebase (``why``: what made it;
    ``also``: one more way out)."""
    clone = fixes.clone_where_made(f.view or "x", f.view_source)
    if also:
        clone = f"{clone}, or {also}"
    if f.base_written:
        base = f"`{f.base}`" if f.base else "its base"
        head = (fixes.for_write(f.write_op, f.write_source, via_optimizer=False, alias=None,
                                backward_source=None, saver_op=None)
                if f.write_op else "make that write out of place")
        clone = fixes.clone_where_made(f.view or "x", f.view_source, before_write=True)
        return (f"{head}, or {clone}: {base} (or another view of it) was written in place "
                f"after `{f.view}` was made from it, and {why}")
    if (f.write_op or "").endswith("__setitem__"):
        return f"{clone}, or build the new value out of place: {why}"
    write = fixes.for_write(f.write_op or "", f.write_source, via_optimizer=False, alias=None,
                            backward_source=None, saver_op=None)
    return f"{write}, or {clone}: {why}"


def _multi_view_fix(f: Facts) -> str:
    if f.view is None:
        return fixes.MULTI_VIEW_FIX
    op = f"`{f.view_op}`" if f.view_op else "its op"
    return _view_fix(f, f"`{f.view}` is one of the views {op} returned, which share one "
                        "backward node and cannot be written in place")


def _function_view_fix(f: Facts) -> str:
    if f.hooked is not None:
        who = f"`{f.hooked}`" if f.hooked else "the module that made it"
        why = (f"{who} has a full backward hook (`register_full_backward_hook`), which hands "
               "on the module's outputs as views that cannot be written in place")
    else:
        fn = f"`{f.view_op}`" if f.view_op else "the custom Function"
        why = (f"{fn} returned a view (of an input, or an input as-is), which cannot be "
               "written in place")
        also = f"have {fn}'s forward return a new tensor (`.clone()` what it returns)"
    if f.view is None:
        return f"clone the tensor before writing (`x = x.clone()`): {why}"
    return _view_fix(f, why, also if f.hooked is None else None)


def _out_fix(f: Facts) -> str:
    dropped = fixes.without_out(f.write_source or "")
    src = fixes.call_on(f.write_source or "")
    if not f.out_requires_grad:
        head = (f"write `{dropped}` instead of `{src}`" if dropped else
                "drop `out=` and assign the result to a new tensor")
        return (f"{head}: an input of this call requires grad, and a call with `out=` "
                "records no backward node (for a result that needs no gradient, make the "
                "call under `with torch.no_grad():`)")
    if dropped:
        return (f"write `{dropped}` instead of `{src}` (a new tensor, which autograd "
                f"differentiates); for a deliberate update of {f.what}'s values, keep `out=` "
                "under `with torch.no_grad():`")
    return (f"for a deliberate update of {f.what}'s values (a parameter step, a clamp), make "
            "the call under `with torch.no_grad():`; to differentiate through it, drop `out=` "
            "and use the result as a new tensor")


def _pytorch_error(f: Facts) -> str:
    return f.pytorch_error or ""


CATALOGUE: dict[str, RuntimeKind] = {}


def _add(kind: RuntimeKind) -> None:
    CATALOGUE[kind.slug] = kind


_add(RuntimeKind(
    code="GGR101", slug="saved-tensor-mutated",
    title="a tensor saved for backward was modified by an in-place write",
    pytorch_message=("one of the variables needed for gradient computation has been modified "
                     "by an inplace operation: [...] is at version N; expected version M "
                     "instead. Hint: ... Good luck!"),
    what_it_does=(
        "Reports an in-place write (`x += y`, `h.relu_()`, `x[i] = v`, `out=`, an optimizer "
        "step, a write through `.data`) into the bytes of a tensor that autograd saved for "
        "the backward pass, naming the write's line, the line that saved the tensor, the "
        "tensor (a parameter's module path, the op that produced it) and the fix."),
    why_bad=(
        "Backward formulas read the saved tensor as it was when the forward ran. When the "
        "write bumped the tensor's version counter, PyTorch refuses at backward with an "
        "error that names neither line. When it did not (a write through `.data`, a fused "
        "kernel that bumps no version), PyTorch computes the gradient from the new bytes "
        "and says nothing: training silently goes wrong."),
    fix_advice=(
        "Write out of place (`h = h.mul(2)` instead of `h.mul_(2)`, `x = x + y` instead of "
        "`x += y`), clone before writing, or move the write (an optimizer step, a weight "
        "update) after the `backward()` that needs the old values. `gradguard.protect()` "
        "repairs it at run time by copying exactly the bytes the write would destroy."),
    example=Example(
        source=(
            "import torch\n\n"
            "x = torch.randn(4, requires_grad=True)\n"
            "h = torch.sigmoid(x)  # sigmoid saves its output for backward\n"
            "h.mul_(2)  # overwrites that output\n"
            "h.sum().backward()  # PyTorch: 'modified by an inplace operation'\n"),
        fixed=(
            "import torch\n\n"
            "x = torch.randn(4, requires_grad=True)\n"
            "h = torch.sigmoid(x)\n"
            "h = h.mul(2)  # a new tensor: the saved output stays intact\n"
            "h.sum().backward()\n"),
        raises="InplaceConflictError"),
    detail=_saved_detail, fix=_write_fix,
))

_add(RuntimeKind(
    code="GGR102", slug="saved-tensor-mutated-outside-pytorch",
    title="a tensor saved for backward was modified outside PyTorch (e.g. through a NumPy view)",
    pytorch_message=None,
    what_it_does=(
        "With `checksum=True` (`gradguard run --checksum`), fingerprints every saved tensor "
        "at save time and reports one whose bytes differ when backward reads them although "
        "no PyTorch write touched it: a NumPy array from `.numpy()`, a DLPack or buffer "
        "alias, a C extension."),
    why_bad=(
        "Writes outside PyTorch bump no version counter and go through no PyTorch entry "
        "point, so neither PyTorch nor gradguard's write interception sees them; backward "
        "silently uses the new bytes."),
    fix_advice=(
        "Give the outside code a copy (`t.detach().numpy().copy()`), or clone the tensor "
        "before handing out its memory."),
    example=Example(
        source=(
            "import torch\n\n"
            "w = torch.randn(3, requires_grad=True)\n"
            "x = torch.randn(3)\n"
            "y = (w * x).sum()  # mul saves x to compute w's gradient\n"
            "x.numpy()[:] = 0.0  # NumPy writes x's memory: no version bump\n"
            "y.backward()  # w.grad is silently all zeros\n"),
        fixed=(
            "import torch\n\n"
            "w = torch.randn(3, requires_grad=True)\n"
            "x = torch.randn(3)\n"
            "y = (w * x).sum()\n"
            "a = x.numpy().copy()  # NumPy gets its own memory\n"
            "a[:] = 0.0\n"
            "y.backward()\n"),
        options={"checksum": True}),
    detail=lambda f: (f"{f.who} needs {f.what}, saved at version {f.version_saved}; its bytes "
                      "changed without any PyTorch write (written outside PyTorch)"),
    fix=lambda f: ("find the code that writes this tensor's memory outside PyTorch (a NumPy "
                   "view from `.numpy()`, a DLPack or buffer alias) and give it a copy "
                   "(`t.detach().numpy().copy()`, or clone the tensor first)"),
))

_add(RuntimeKind(
    code="GGR103", slug="ctx-attribute-mutated",
    title="a tensor a custom autograd.Function kept on ctx was modified before its backward",
    pytorch_message=None,
    what_it_does=(
        "Reports an in-place write into a tensor that a custom `torch.autograd.Function` "
        "kept as a ctx attribute (`ctx.scale = s`) rather than with "
        "`ctx.save_for_backward(...)`, made between the Function's forward and its backward."),
    why_bad=(
        "PyTorch checks the versions of tensors saved with `save_for_backward`, not of ctx "
        "attributes: the Function's backward silently computes with the new values."),
    fix_advice=(
        "Keep tensors with `ctx.save_for_backward(...)` (PyTorch then checks them), and write "
        "out of place or clone before writing."),
    example=Example(
        source=(
            "import torch\n\n"
            "class Scale(torch.autograd.Function):\n"
            "    @staticmethod\n"
            "    def forward(ctx, x, s):\n"
            "        ctx.s = s  # kept on ctx: PyTorch does not check it\n"
            "        return x * s\n\n"
            "    @staticmethod\n"
            "    def backward(ctx, grad):\n"
            "        return grad * ctx.s, None\n\n"
            "x = torch.randn(3, requires_grad=True)\n"
            "s = torch.full((3,), 2.0)\n"
            "y = Scale.apply(x, s)\n"
            "s.mul_(10)  # x.grad becomes 20, not 2\n"
            "y.sum().backward()\n"),
        fixed=(
            "import torch\n\n"
            "class Scale(torch.autograd.Function):\n"
            "    @staticmethod\n"
            "    def forward(ctx, x, s):\n"
            "        ctx.save_for_backward(s)\n"
            "        return x * s\n\n"
            "    @staticmethod\n"
            "    def backward(ctx, grad):\n"
            "        (s,) = ctx.saved_tensors\n"
            "        return grad * s, None\n\n"
            "x = torch.randn(3, requires_grad=True)\n"
            "s = torch.full((3,), 2.0)\n"
            "y = Scale.apply(x, s)\n"
            "s = s.mul(10)  # a new tensor\n"
            "y.sum().backward()\n")),
    detail=lambda f: (f"{f.label} keeps {f.what} on ctx (not via save_for_backward, so "
                      "PyTorch does not check it); it was modified before the backward ran"),
    fix=_ctx_fix,
))

_add(RuntimeKind(
    code="GGR104", slug="checkpoint-input-mutated",
    title="an input of a checkpointed region was modified before the region was recomputed",
    pytorch_message=None,
    what_it_does=(
        "Reports an in-place write into an input of a `torch.utils.checkpoint` region made "
        "after the region's forward and before its backward, which recomputes the region "
        "from its inputs."),
    why_bad=(
        "Recomputation reads the inputs as they are at backward: a write in between (under "
        "`no_grad`, or through `.data`) silently changes the recomputed forward, and so the "
        "gradients."),
    fix_advice="Clone the input before writing, or write it after `backward()`.",
    example=Example(
        source=(
            "import torch\n"
            "from torch.utils.checkpoint import checkpoint\n\n"
            "lin = torch.nn.Linear(3, 3)\n"
            "x = torch.randn(2, 3, requires_grad=True) * 1\n"
            "y = checkpoint(lambda t: torch.tanh(lin(t)), x, use_reentrant=False)\n"
            "x.data.add_(1.0)  # the recomputation in backward sees x + 1\n"
            "y.sum().backward()\n"),
        fixed=(
            "import torch\n"
            "from torch.utils.checkpoint import checkpoint\n\n"
            "lin = torch.nn.Linear(3, 3)\n"
            "x = torch.randn(2, 3, requires_grad=True) * 1\n"
            "y = checkpoint(lambda t: torch.tanh(lin(t)), x, use_reentrant=False)\n"
            "y.sum().backward()\n"
            "x.data.add_(1.0)  # after backward\n")),
    detail=lambda f: (f"{f.what} is an input of a checkpointed region; it was modified after "
                      "the region's forward, so recomputation in backward silently used the "
                      "new values"),
    fix=lambda f: ("do not modify inputs of a checkpointed region before its backward: clone "
                   "the input before writing, or write it after `backward()`"),
))

def _read_detail(f: Facts) -> str:
    if f.pending:
        return (f"this write would change {f.what}, which a checkpointed region read in its "
                "forward and will read again when it recomputes at backward; stopped before "
                "the write (when='write')")
    changed = (f"it is now at version {f.version_now}" if f.moved else
               "its version did not move")
    return (f"{f.what} is read inside a checkpointed region without being one of its inputs "
            f"(the `checkpoint(...)` call under SAVED); saved there at version "
            f"{f.version_saved}, {changed}, and its bytes differ: the recomputation during "
            "backward reads the new values, so the gradient is silently wrong (PyTorch checks "
            "no version there, and determinism_check compares only shape, dtype and device)")


def _read_fix(f: Facts) -> str:
    back = fixes.backward_call(f.backward_source)
    after = f"`{back}`" if back else "the backward of that region"
    write = f"`{fixes._strip_comment(f.write_source)}`" if f.write_source else "the write"
    return (f"move {write} after {after}; or pass the tensor to the checkpointed function as "
            "an argument and give the new values a new tensor (`self.mask = new_mask`, not "
            "`self.mask.copy_(new_mask)`): checkpoint keeps its arguments, so the "
            "recomputation reads the tensor the forward read")


_READ_SETUP = (  # GGR105's example and its twin, up to the write
    "import torch\n"
    "from torch.utils.checkpoint import checkpoint\n\n"
    "lin = torch.nn.Linear(3, 3)\n"
    "mask = torch.ones(3)\n"
    "x = torch.randn(2, 3, requires_grad=True)\n"
    "y = checkpoint(lambda t: torch.tanh(lin(t)) * mask, x, use_reentrant=False)\n")

_add(RuntimeKind(
    code="GGR105", slug="checkpoint-read-mutated",
    title=("a tensor a checkpointed region reads (not its input) was modified before the "
           "region was recomputed"),
    pytorch_message=None,
    what_it_does=(
        "Reports an in-place write, made after the forward of a non-reentrant "
        "`torch.utils.checkpoint` region and before its backward, into a tensor the region "
        "read without taking it as an input: a module's parameter or buffer (a mask "
        "refilled per micro-batch), or a leaf tensor from the enclosing scope. It names the "
        "write and the `checkpoint(...)` call, also when the write ran under `no_grad`. "
        "Only a write that changed the bytes counts: one restored before backward is clean."),
    why_bad=(
        "Checkpoint drops what the region saved and reruns the region at backward. The rerun "
        "reads parameters, buffers and closure tensors as they are then: the gradient is "
        "computed from values the forward never used. Stock PyTorch says nothing (its "
        "`determinism_check` compares only shape, dtype and device), with or without "
        "`no_grad` around the write."),
    fix_advice=(
        "Make the write after the region's `backward()`; or pass the tensor to the "
        "checkpointed function as an argument and give new values a new tensor "
        "(`self.mask = new_mask` instead of `self.mask.copy_(new_mask)`), since checkpoint "
        "keeps its arguments for the recomputation."),
    example=Example(
        source=(
            _READ_SETUP +
            "mask.copy_(torch.tensor([1.0, 0.0, 1.0]))  # the next micro-batch's mask\n"
            "y.sum().backward()  # recomputes with the new mask\n"),
        fixed=(
            _READ_SETUP +
            "y.sum().backward()\n"
            "mask.copy_(torch.tensor([1.0, 0.0, 1.0]))  # after backward\n")),
    detail=_read_detail, fix=_read_fix,
))

_add(RuntimeKind(
    code="GGR201", slug="leaf-inplace",
    title="in-place write into a leaf tensor that requires grad",
    pytorch_message="a leaf Variable that requires grad is being used in an in-place operation.",
    what_it_does=(
        "Explains PyTorch's error for an in-place write into a leaf that requires grad (a "
        "parameter, or a tensor created with `requires_grad=True`) while grad mode is on: "
        "which tensor it is and the out-of-place form of the line."),
    why_bad=(
        "Autograd accumulates a leaf's gradient into `.grad`; an in-place write would change "
        "the value the graph depends on without a node to differentiate, so PyTorch refuses."),
    fix_advice=(
        "Write out of place (`x = x + y` makes a new tensor), or, for a deliberate update "
        "such as a parameter step, do it under `with torch.no_grad():`."),
    example=Example(
        source=(
            "import torch\n\n"
            "w = torch.randn(3, requires_grad=True)\n"
            "w += 1  # PyTorch: 'a leaf Variable that requires grad ...'\n"),
        fixed=(
            "import torch\n\n"
            "w = torch.randn(3, requires_grad=True)\n"
            "with torch.no_grad():\n"
            "    w += 1  # a deliberate update, outside the graph\n"),
        raises="RuntimeError"),
    detail=_pytorch_error, fix=_leaf_fix,
))

_add(RuntimeKind(
    code="GGR202", slug="leaf-view-inplace",
    title="in-place write into a view of a leaf tensor that requires grad",
    pytorch_message=("a view of a leaf Variable that requires grad is being used in an "
                     "in-place operation."),
    what_it_does=(
        "Explains PyTorch's error for an in-place write into a view (a slice, `.view`, `.t()`) "
        "of a leaf that requires grad, such as a slice of a parameter."),
    why_bad="Writing a view writes its base, the leaf: PyTorch refuses as for the leaf itself.",
    fix_advice=(
        "Build the new value out of place (`torch.cat`, `torch.where`), or make the update "
        "under `with torch.no_grad():`."),
    example=Example(
        source=(
            "import torch\n\n"
            "w = torch.randn(4, requires_grad=True)\n"
            "head = w[:2]\n"
            "head.mul_(2)  # PyTorch: 'a view of a leaf Variable ...'\n"),
        fixed=(
            "import torch\n\n"
            "w = torch.randn(4, requires_grad=True)\n"
            "head = w[:2].mul(2)  # a new tensor\n"),
        raises="RuntimeError"),
    detail=_pytorch_error, fix=_leaf_fix,
))

_add(RuntimeKind(
    code="GGR203", slug="multi-output-view-inplace",
    title="in-place write into an output of a view op that returns several views",
    pytorch_message=("Output 0 of Split is a view and is being modified inplace. This view is "
                     "the output of a function that returns multiple views. Such functions do "
                     "not allow the output views to be modified inplace. You should replace the "
                     "inplace operation by an out-of-place one."),
    what_it_does=(
        "Explains PyTorch's error for an in-place write into an output of `split`, `chunk`, "
        "`unbind` (or another op returning several views)."),
    why_bad=(
        "Those outputs share one backward node; autograd cannot rebase one of them on an "
        "in-place op, so PyTorch refuses."),
    fix_advice="Clone the piece before writing (`a = a.clone()`), or compute it out of place.",
    example=Example(
        source=(
            "import torch\n\n"
            "x = torch.randn(4, requires_grad=True) * 1\n"
            "a, b = x.split(2)\n"
            "a.mul_(2)  # PyTorch: '... returns multiple views ...'\n"),
        fixed=(
            "import torch\n\n"
            "x = torch.randn(4, requires_grad=True) * 1\n"
            "a, b = x.split(2)\n"
            "a = a.mul(2)\n"),
        raises="RuntimeError"),
    detail=_pytorch_error, fix=_multi_view_fix,
))

_add(RuntimeKind(
    code="GGR204", slug="inference-tensor-inplace",
    title="in-place write into an inference tensor outside inference mode",
    pytorch_message="Inplace update to inference tensor outside InferenceMode is not allowed.",
    what_it_does=(
        "Explains PyTorch's error for an in-place write, outside `torch.inference_mode()`, into "
        "a tensor created inside it."),
    why_bad="Inference tensors have no version counter, so PyTorch forbids writing them later.",
    fix_advice=(
        "Clone the tensor outside inference mode before writing, or create it under "
        "`torch.no_grad()` instead."),
    example=Example(
        source=(
            "import torch\n\n"
            "with torch.inference_mode():\n"
            "    t = torch.ones(3)\n"
            "t.add_(1)  # PyTorch: 'Inplace update to inference tensor ...'\n"),
        fixed=(
            "import torch\n\n"
            "with torch.no_grad():\n"
            "    t = torch.ones(3)\n"
            "t.add_(1)\n"),
        raises="RuntimeError"),
    detail=_pytorch_error, fix=lambda f: fixes.INFERENCE_FIX,
))

_add(RuntimeKind(
    code="GGR205", slug="function-view-inplace",
    title=("in-place write into a view returned by a custom autograd.Function (or passed "
           "on by a module's full backward hook)"),
    pytorch_message=("Output 0 of BackwardHookFunction is a view and is being modified "
                     "inplace. This view was created inside a custom Function (or because an "
                     "input was returned as-is) and the autograd logic to handle view+inplace "
                     "would override the custom backward associated with the custom Function, "
                     "leading to incorrect gradients. This behavior is forbidden. You can fix "
                     "this by cloning the output of the custom Function."),
    what_it_does=(
        "Explains PyTorch's error for an in-place write into a view that a custom "
        "`torch.autograd.Function` returned (its `forward` returned a view of an input, or an "
        "input as-is), or into an output of a module with a full backward hook "
        "(`register_full_backward_hook` passes the module's outputs through "
        "`BackwardHookFunction`, which returns them as views): the line that made the view, "
        "the Function or the hooked module, and the out-of-place form of the write."),
    why_bad=(
        "Autograd would have to replace the Function's own backward to rebase the view on "
        "the in-place op, which would give wrong gradients: PyTorch refuses. The same holds "
        "when the view's base is written in place after the view was made, at the view's "
        "next use."),
    fix_advice=(
        "Write out of place (`y = y + 1` instead of `y.add_(1)`; `inplace=False` for an "
        "activation module after a hooked module), or clone the view where it is made "
        "(`y = model(x).clone()`); for your own Function, return a new tensor from its "
        "`forward` (`.clone()` the view)."),
    example=Example(
        source=(
            "import torch\n\n"
            "flatten = torch.nn.Flatten()\n"
            "flatten.register_full_backward_hook(lambda module, grad_in, grad_out: None)\n"
            "y = flatten(torch.randn(2, 3, 4, requires_grad=True))  # handed on as a view\n"
            "y.add_(1)  # PyTorch: 'Output 0 of BackwardHookFunction is a view ...'\n"),
        fixed=(
            "import torch\n\n"
            "flatten = torch.nn.Flatten()\n"
            "flatten.register_full_backward_hook(lambda module, grad_in, grad_out: None)\n"
            "y = flatten(torch.randn(2, 3, 4, requires_grad=True))\n"
            "y = y + 1  # a new tensor\n"),
        raises="RuntimeError"),
    detail=_pytorch_error, fix=_function_view_fix,
))

_add(RuntimeKind(
    code="GGR206", slug="out-requires-grad",
    title="a call with `out=` where an argument requires grad",
    pytorch_message=("clamp(): functions with out=... arguments don't support automatic "
                     "differentiation, but one of the arguments requires grad."),
    what_it_does=(
        "Explains PyTorch's error for a call with `out=` (`torch.clamp(a, 0, 1, out=a)`) in "
        "grad mode where an argument requires grad -- often the `out=` tensor itself, a "
        "parameter or a leaf: which tensor, where it came from (the parameter's path, the "
        "leaf's creation line) and the out-of-place form of the line."),
    why_bad=(
        "A call writing its result into `out=` records no backward node, so autograd could "
        "not differentiate through it: PyTorch refuses rather than give wrong gradients."),
    fix_advice=(
        "Drop `out=` and assign the result (`alpha = torch.clamp(alpha, 0, 1)`), or, for a "
        "deliberate update of a parameter's values, keep `out=` under "
        "`with torch.no_grad():`."),
    example=Example(
        source=(
            "import torch\n\n"
            "alpha = torch.rand(3, requires_grad=True)\n"
            "torch.clamp(alpha, 0, 1, out=alpha)  # PyTorch: 'functions with out=... ...'\n"),
        fixed=(
            "import torch\n\n"
            "alpha = torch.rand(3, requires_grad=True)\n"
            "alpha = torch.clamp(alpha, 0, 1)  # a new tensor, differentiable\n"),
        raises="RuntimeError"),
    detail=_pytorch_error, fix=_out_fix,
))

BY_CODE: dict[str, RuntimeKind] = {k.code: k for k in CATALOGUE.values()}


def kind(slug: str) -> RuntimeKind:
    return CATALOGUE[slug]
