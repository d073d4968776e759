"""Non-reentrant `torch.utils.checkpoint`: what its region reads that is not its input.

Inside a checkpointed forward, checkpoint's own saved-tensor hooks replace gradguard's:
what the region's ops save is dropped, and recomputed at backward. The region's inputs are
saved through gradguard's hooks (GGR104); what it reads from elsewhere -- parameters,
buffers (a mask refilled per micro-batch), closure tensors -- is read again, as it is then,
by the recomputation. To see those, the checkpoint hooks' pack is wrapped while a detect()
session is active: each leaf tensor saved inside the region is noted (a weak reference and
its version, nothing held; for a view of a leaf, such as the `weight.t()` a linear
layer saves, the leaf and the view's geometry); when the region's forward ends, the ones still alive (they
outlive the region: parameters, buffers, closure tensors; not the region's own temporary
tensors) become saved records of kind ``checkpoint-read``, with the checkpoint call's line
as their save site, and writes to them are seen like writes to any saved tensor. At the
region's first unpack in backward (before it recomputes), a record whose bytes an
intercepted write changed is a conflict (GGR105): bytes decide, so a write that restored
them is clean. Non-leaf closure tensors are not covered (telling them from the region's
own tensors would cost a hook per tensor creation).
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import torch

from gradguard._core import intercept, sites
from gradguard._core.registry import SavedRecord, storage_key
from gradguard._core.runtime import new_record, runtime

READ = "checkpoint-read"  # SavedRecord.kind
_ATTR = "_gradguard_reads"  # on the checkpoint hooks object, between enter and exit
_state = intercept.state


class Recomputation:
    """The label (`intercept.state.during`) on writes made while a checkpoint recomputes
    its region: the checkpoint call's stack, and which implementation it is."""

    __slots__ = ("stack", "reentrant")

    def __init__(self, stack: sites.RawStack, reentrant: bool) -> None:
        self.stack = stack
        self.reentrant = reentrant


def labelled(fn: Callable, label: Recomputation) -> Callable:
    """``fn``, running with ``label`` on the writes it makes."""

    def run(*args: Any, **kwargs: Any) -> Any:
        previous = _state.during
        _state.during = label
        try:
            return fn(*args, **kwargs)
        finally:
            _state.during = previous

    return run


class RegionReads:
    """The leaves one checkpointed forward saved (see the module docstring)."""

    __slots__ = ("session", "seen", "records", "reported", "label", "checked")

    def __init__(self, session: Any) -> None:  # a DetectSession (this module is its part)
        self.session = session
        # (id of the leaf, the saved view's geometry or None) -> (weak reference, version)
        self.seen: dict[tuple[int, Any], tuple[Any, int]] = {}
        self.records: list[SavedRecord] = []
        self.reported: set[int] = set()
        self.label: Optional[Recomputation] = None  # set when the forward ends
        self.checked: set[int] = set()  # graph tasks (backward calls) already checked

    def saw(self, t: torch.Tensor) -> None:
        """A tensor saved inside the region: note it if it is a leaf or a view of one
        (``weight.t()``, which a linear layer saves), by its leaf and the view's geometry."""
        geometry = None
        if t.grad_fn is not None:  # made inside the region (recomputed), or a view
            if not t._is_view():
                return
            base = t._base
            if base is None or base.grad_fn is not None or base.dtype != t.dtype:
                return
            geometry = (tuple(t.shape), tuple(t.stride()), int(t.storage_offset()))
            t = base
        if t.is_inference():
            return  # no version counter
        unread = _state.unread
        if unread is not None and storage_key(t) in unread:
            return  # saved, but backward never reads its values (batch norm's stats)
        key = (id(t), geometry)
        known = self.seen.get(key)
        if known is None or known[0]() is not t:
            self.seen[key] = (weakref.ref(t), t._version)

    def forward_done(self) -> None:
        """The region's forward ended: keep what outlives it, as saved records."""
        session = self.session
        stack = sites.capture(2)[0]  # the checkpoint call's, shared by the region's records
        self.label = Recomputation(stack, reentrant=False)
        for (_, geometry), (ref, version) in self.seen.items():
            leaf = ref()
            if leaf is None:
                continue
            key = storage_key(leaf)
            if key is None or any(r.tensor is leaf for r in runtime.registry.on_storage(key)):
                continue  # no bytes to compare, or a region input (checked as GGR104)
            t = leaf if geometry is None else leaf.detach().as_strided(*geometry)
            rec = new_record(t, session, session._watcher, READ, "torch.utils.checkpoint",
                             skip=2, stack=stack)
            rec.version = version
            self.records.append(rec)
        self.seen = {}

    def check(self) -> None:
        """Before the region recomputes: a conflict for each record whose bytes changed."""
        for rec in self.records:
            if not rec.writes or id(rec) in self.reported:
                continue
            if not self.session.bytes_changed(rec):
                continue  # bytes decide: unchanged, restored, or unreadable (no claim)
            self.reported.add(id(rec))
            self.session.confirm(rec)


def on_enter(session: Any, hooks: Any) -> None:
    """``hooks`` (checkpoint's `_checkpoint_hook`) is being entered: wrap its pack and
    unpack (before they are pushed)."""
    pack: Optional[Callable] = getattr(hooks, "pack_hook", None)
    unpack: Optional[Callable] = getattr(hooks, "unpack_hook", None)
    if pack is None or unpack is None:
        return
    reads = RegionReads(session)

    def pack_hook(x: torch.Tensor) -> Any:
        holder = pack(x)
        try:
            reads.saw(x)
        except Exception as exc:  # noqa: BLE001 - checkpoint goes on unchecked
            runtime.internal_error("a tensor saved inside a checkpointed region", exc)
        return holder

    def unpack_hook(holder: Any) -> Any:
        task = torch._C._current_graph_task_id()
        if reads.records and task != -1 and task not in reads.checked:
            # Once per backward, before its recomputation: a write made later in the same
            # backward (an optimizer step in a gradient hook) is not what it read.
            reads.checked.add(task)
            reads.check()
        label = reads.label
        if label is None:
            return unpack(holder)
        previous = _state.during
        _state.during = label  # the first unpack recomputes: its writes say so
        try:
            return unpack(holder)
        finally:
            _state.during = previous

    # The wrappers share the originals' attribute dicts: checkpoint keeps state on its hook
    # functions (torch 2.14 sets and deletes `pack_hook._user_hooks` around the region and
    # marks them `_checkpoint_internal`), which must read the same through either.
    pack_hook.__dict__ = getattr(pack, "__dict__", {})
    unpack_hook.__dict__ = getattr(unpack, "__dict__", {})
    hooks.pack_hook, hooks.unpack_hook = pack_hook, unpack_hook
    setattr(hooks, _ATTR, reads)


def on_exit(hooks: Any) -> None:
    reads = getattr(hooks, _ATTR, None)
    if reads is None:
        return
    delattr(hooks, _ATTR)
    try:
        reads.forward_done()
    except Exception as exc:  # noqa: BLE001
        runtime.internal_error("the tensors a checkpointed region reads", exc)
