"""The registry of live saved tensors, indexed by storage.

A `SavedRecord` is what our pack hook hands to autograd, so autograd owns it: it lives
exactly as long as the graph node that saved the tensor, and dies when the graph is
freed (backward without ``retain_graph``, or the graph going out of scope). The registry
itself only holds weak references, so it never keeps a tensor alive.

Writes look up the records that share the written storage; aliasing is decided by
storage identity and byte range, never by ``data_ptr()`` equality or version counters.
"""
from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import Any, Optional

import torch

from gradguard._core.sites import RawStack


class WriteRecord:
    """One intercepted in-place write (no tensors held: only where and what)."""

    __slots__ = ("op", "stack", "entry", "alias", "start", "end", "whole", "storage", "node",
                 "during")

    def __init__(self, op: str, stack: RawStack, entry, alias: Optional[str],
                 start: int, end: int, whole: bool) -> None:
        self.op = op
        self.stack = stack
        self.entry = entry
        self.alias = alias
        self.start = start  # written byte range in the storage, [start, end)
        self.end = end
        self.whole = whole  # metadata writes (set_, .data =, resize_) count as whole-tensor
        # A write to the storage itself (`UntypedStorage.resize_`): every byte it held is
        # gone, and what comes back after a resize is not what was saved.
        self.storage = False
        # The autograd node whose backward was running when the write happened (a custom
        # Function's backward, a hook), by name; None in forward code. `during`: what a
        # session labelled the code running then (`intercept.state.during`), or None.
        self.node: Optional[str] = None
        self.during: Any = None


class SavedRecord:
    """A tensor autograd saved for backward, as our pack hook saw it."""

    __slots__ = (
        "tensor", "version", "key", "owner", "watcher", "stack", "kind", "label", "writes",
        "checksum", "producer", "inner", "fresh", "extra", "source", "output_nr", "grad_fn_id",
        "span", "__weakref__",
    )

    def __init__(self, tensor: torch.Tensor, version: int, key: Optional[int], owner: Any,
                 stack: RawStack, kind: str = "saved", label: Optional[str] = None) -> None:
        self.tensor = tensor
        self.version = version
        self.key = key
        self.owner = owner  # the session that saved it (unpacks it, confirms conflicts)
        # The session told of writes to it (`Session.before_writes`), or None: most records
        # have none, and then a write costs no call.
        self.watcher: Any = None
        self.stack = stack
        self.kind = kind  # "saved" | "ctx" | "checkpoint"
        self.label = label  # e.g. the autograd.Function name for ctx attributes
        self.writes: Optional[list[tuple[WriteRecord, bool]]] = None  # (write, overlaps?)
        self.checksum: Optional[int] = None
        self.producer: Optional[type] = None
        self.inner: tuple = ()  # torch code between the user's line and the save
        # An op's own output, not a view: its bytes were allocated by that op, so it is
        # no module's parameter or buffer (reports skip the costly search for a name).
        self.fresh = False
        self.extra: Any = None  # the watcher's own per-record state (copy-on-write's copy)
        # For a non-leaf: a weak reference to the tensor autograd was handed, its output_nr
        # and the id of its grad_fn at save time -- what PyTorch's own unpack checks
        # consult, and which hooks switch off: a later `.detach_()`, the producer named in
        # its message. (Slots, not a tuple: each object that outlives a save counts
        # towards the next garbage collection.)
        self.source: Any = None
        self.output_nr = 0
        self.grad_fn_id = 0
        # (start, end, fills) of the saved tensor's bytes (`saved_span`), once a write
        # asked; dropped by a metadata write to the tensor itself (`set_`, `resize_`...).
        self.span: Optional[tuple[int, int, bool]] = None


_STRIDED = torch.strided


def storage_key(t: torch.Tensor) -> Optional[int]:
    """Identity of the storage under ``t``, or None when it has no single dense one.

    The identity of the StorageImpl object, not the address of its bytes: a storage
    resized to 0 and re-materialised (FSDP) keeps it, and a new allocation landing on the
    bytes a freed storage had gets another. A record holds its tensor, and so its
    storage, alive: the identity cannot be reused while a record needs it."""
    if t.layout is not _STRIDED or t.is_nested:
        return None  # sparse, nested, mkldnn: no byte ranges to compare
    try:
        return t.untyped_storage()._cdata  # an int (the StorageImpl's address)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return None  # functional/fake tensors, subclasses without storage


def byte_range(t: torch.Tensor) -> tuple[int, int]:
    """[start, end) bytes of its storage that ``t`` can address."""
    item = t.element_size()
    start = int(t.storage_offset()) * item
    numel = t.numel()
    if numel == 0:
        return start, start
    if t.is_contiguous():
        return start, start + numel * item
    extent = 1
    for size, stride in zip(t.shape, t.stride()):
        extent += (size - 1) * abs(stride)
    return start, start + int(extent) * item


def saved_span(rec: SavedRecord) -> tuple[int, int, bool]:
    """``rec``'s saved byte range and whether its elements fill it (`dense`), computed
    once: a storage written every step (a weight) asks at each write."""
    span = rec.span
    if span is None:
        t = rec.tensor
        start, end = byte_range(t)
        span = rec.span = (start, end, t.is_contiguous() or dense(t, start, end))
    return span


def has_bytes(t: torch.Tensor, end: Optional[int] = None) -> bool:
    """Whether ``t``'s storage still holds every byte ``t`` addresses (up to ``end``, its
    byte range's end, if known). FSDP frees a storage by resizing it to 0 while tensors on
    it stay saved: reading those would read freed memory."""
    return int(t.untyped_storage().nbytes()) >= (byte_range(t)[1] if end is None else end)


def dense(t: torch.Tensor, start: int, end: int) -> bool:
    """Whether ``t``'s elements fill its byte range [start, end) with no gap (contiguous,
    or a permutation of a contiguous block such as ``w.t()``)."""
    return t.numel() * t.element_size() == end - start


_EXACT_LIMIT = 1 << 24  # elements; past this, interval overlap is taken as overlap


def overlaps(saved: torch.Tensor, start: int, end: int, written: Optional[torch.Tensor],
             span: Optional[tuple[int, int, bool]] = None) -> bool:
    """Whether the write touches bytes of ``saved``. Intervals first; for strided tensors
    whose intervals interleave (e.g. two columns of one matrix) the exact element sets.
    ``span``: ``saved``'s `saved_span`, when it is a record's."""
    if span is None:
        s_start, s_end = byte_range(saved)
        fills = None
    else:
        s_start, s_end, fills = span
    if s_start >= end or start >= s_end or s_start == s_end or start == end:
        return False
    if written is None:
        return True
    if fills is None:
        fills = saved.is_contiguous() or dense(saved, s_start, s_end)
    if fills and (written.is_contiguous() or dense(written, start, end)):
        return True  # each fills its range: ranges that meet share elements
    item = saved.element_size()
    if written.element_size() != item or s_start % item or start % item:
        return True
    lo, hi = min(s_start, start) // item, max(s_end, end) // item
    if hi - lo > _EXACT_LIMIT:
        return True
    with torch.no_grad():
        mask = torch.zeros(hi - lo, dtype=torch.bool)
        mask.as_strided(saved.shape, saved.stride(), saved.storage_offset() - lo).fill_(True)
        hit = mask.as_strided(written.shape, written.stride(), written.storage_offset() - lo)
        return bool(hit.any())


class _RecordRef(weakref.ref):
    """The registry's one weak reference to a record: queued by `Registry.add`, then moved
    into the index; ``indexed`` says whether its death is counted (one allocation a saved
    tensor, not two: what survives a save is what makes the garbage collector run)."""

    __slots__ = ("indexed",)  # set when indexed; unset (not indexed) until then: no
    # Python-level __init__, so making one costs what a plain weak reference does
    indexed: bool


class Registry:
    """Live saved records, indexed by storage when a write needs them.

    `add` runs once per saved tensor, so it only appends a weak reference to a queue (and
    the storage key to a set). The queue is indexed by storage lazily, when an intercepted
    write to a storage that something queued is on needs it (or the queue grows long): most
    records die with their graph before any such write happens, and never cost a lookup or
    a lock. The reference's callback keeps the count of live indexed records exact, which
    is what lets a write with nothing saved (every optimizer step after backward) return
    at once.
    Thread-safe: unpack and graph teardown run on autograd worker threads.
    """

    _SWEEP_MIN = 1024
    _DRAIN_AT = 4096

    def __init__(self) -> None:
        # Reentrant: a record can die (and its callback take the lock) while we hold it.
        self._lock = threading.RLock()
        self._pending: deque[_RecordRef] = deque()
        # The storage keys of what is pending (a superset: cleared with the queue): a
        # write to any other storage needs no indexing (BatchNorm's `num_batches_tracked`
        # and residual `+=` in forward touch nothing saved).
        self._pending_keys: set[int] = set()
        self._index: dict[int, list[_RecordRef]] = {}
        self._indexed_live = 0
        self._indexed_refs = 0  # dead ones included, until a sweep
        self._on_dead = self._count_dead

    def add(self, rec: SavedRecord) -> None:
        key = rec.key
        if key is None:
            key = rec.key = storage_key(rec.tensor)
            if key is None:
                return  # no dense storage: no write can be matched to it
        pending = self._pending
        pending.append(_RecordRef(rec, self._on_dead))
        # After the append: a drain in between leaves a stale key (a needless drain
        # later), never a queued record whose key is missing.
        self._pending_keys.add(key)
        if len(pending) > self._DRAIN_AT:
            with self._lock:
                self._drain()

    def maybe_live(self) -> bool:
        """Cheap: False only when no record can be alive."""
        return bool(self._pending) or self._indexed_live > 0

    def _count_dead(self, ref: "_RecordRef") -> None:
        if getattr(ref, "indexed", False):
            with self._lock:
                self._indexed_live -= 1

    def _drain(self) -> None:
        pending = self._pending
        index = self._index
        self._pending_keys.clear()  # before the queue empties: see `add`
        while True:
            try:
                ref = pending.popleft()
            except IndexError:
                break
            rec = ref()
            if rec is None:
                continue
            bucket = index.get(rec.key)  # set by `add`
            if bucket is None:
                bucket = index[rec.key] = []
            bucket.append(ref)  # the same reference: one per record, its callback counts
            ref.indexed = True
            self._indexed_live += 1
            self._indexed_refs += 1
            del rec
        if self._indexed_refs > self._SWEEP_MIN and self._indexed_refs > 2 * self._indexed_live:
            self._sweep()

    def _sweep(self) -> None:
        live: dict[int, list[_RecordRef]] = {}
        count = 0
        for key, refs in self._index.items():
            kept = [r for r in refs if r() is not None]
            if kept:
                live[key] = kept
                count += len(kept)
        self._index = live
        self._indexed_refs = count

    def sweep(self) -> None:
        """Index what is pending and drop the entries of dead records now."""
        with self._lock:
            self._drain()
            self._sweep()

    def sweep_if_large(self) -> None:
        """`sweep`, once enough references are held for it to pay (a session entered and
        left every step would otherwise pay one a step: ~0.1 ms on the ResNet benchmark)."""
        if self.index_size() > self._SWEEP_MIN:
            self.sweep()

    def on_storage(self, key: int) -> list[SavedRecord]:
        """Live records whose tensor lies in the storage ``key``."""
        with self._lock:
            pending = self._pending
            if pending:
                if key in self._pending_keys:
                    self._drain()
                else:
                    # Nothing pending is on this storage; drop the dead at the head, so
                    # that once a graph is freed the queue empties and `maybe_live` says
                    # so (an optimizer step's writes then cost no lookup).
                    while pending and pending[0]() is None:
                        pending.popleft()
            refs = self._index.get(key)
            if not refs:
                return []
            found = []
            for ref in refs:
                rec = ref()
                if rec is not None:
                    found.append(rec)
            if len(found) < len(refs):
                # Drop the dead here: a storage written every step (a weight) would
                # otherwise collect one dead entry a step until the next sweep.
                live = [ref for ref in refs if ref() is not None]
                if live:
                    self._index[key] = live
                else:
                    del self._index[key]
                self._indexed_refs -= len(refs) - len(live)
        return found

    def records(self) -> list[SavedRecord]:
        with self._lock:
            self._drain()
            refs = [r for refs in self._index.values() for r in refs]
        return [r for r in (ref() for ref in refs) if r is not None]

    def __len__(self) -> int:
        """Number of live records (exact; O(n), for tests and diagnostics)."""
        return len(self.records())

    def index_size(self) -> int:
        """Weak references held, dead ones included (bounded by the sweeps)."""
        return len(self._pending) + self._indexed_refs
