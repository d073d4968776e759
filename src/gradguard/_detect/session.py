"""`gradguard.detect()`: the runtime sanitizer.

How it works, in one paragraph: a saved-tensor pack hook records every tensor autograd
saves (its version and where it was saved) in a registry indexed by storage; patched
in-place entry points record every write that lands on a registered storage (op, where,
byte range); the unpack hook, which runs exactly when backward needs the tensor,
confirms a conflict if the tensor's version moved or a recorded write overlapped its
bytes, and names that write. Installing saved-tensor hooks turns off PyTorch's own
version check, so the unpack hook always re-checks versions itself: a program stock
PyTorch rejects is still rejected, with a better message.

`confirm` only gathers facts (`gradguard._findings.kinds.Facts`); the words of a report
-- its detail and fix sentences -- come from the kind's catalogue entry.
"""
from __future__ import annotations

import ctypes
import dataclasses
import inspect
import os
import re
import threading
import warnings
import weakref
import zlib
from typing import Any, Callable, Literal, Optional, Sequence, TypeVar, overload

import torch
import torch.utils.checkpoint
from torch.autograd.function import BackwardCFunction

from gradguard._core import intercept, sites
from gradguard._core.names import module_path
from gradguard._core.registry import (
    SavedRecord,
    WriteRecord,
    byte_range,
    dense,
    has_bytes,
    storage_key,
)
from gradguard._core.runtime import WRITE_ERRORS, new_record, runtime
from gradguard._core.session import Session
from gradguard._core.sites import capture_save
from gradguard._detect import checkpoint, origin
from gradguard._detect.graph import capture as capture_graph
from gradguard._detect.graph import saving_node
from gradguard._findings.kinds import Facts
from gradguard._findings.kinds import kind as catalogue_kind
from gradguard._findings.model import Conflict, Mutation, SavedBy, TensorInfo
from gradguard._findings.nodes import forward_op
from gradguard.errors import GradguardError, InplaceConflictError, InplaceConflictWarning

OnConflict = Literal["raise", "warn", "record"]
When = Literal["backward", "write"]
F = TypeVar("F", bound=Callable[..., Any])

_CHECKPOINT_HOOKS = {"_checkpoint_hook", "_recomputation_hook"}
_OPTIM_PATH = os.path.join("torch", "optim", "")
_CHECKPOINT_PATH = os.path.join("torch", "utils", "checkpoint.py")
_KIND_OF_RECORD = {
    "saved": "saved-tensor-mutated",
    "ctx": "ctx-attribute-mutated",
    "checkpoint": "checkpoint-input-mutated",
    "checkpoint-read": "checkpoint-read-mutated",  # gradguard._detect.checkpoint
}


_DETACHED_IN_PLACE = (
    "Trying to use a saved tensor that has been detached in-place, i.e. with .detach_()."
    "This is not supported, please use out-of-place `.detach()` instead")


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (0 if dynamo never ran)."""
    import sys

    utils = sys.modules.get("torch._dynamo.utils")
    counters = getattr(utils, "counters", None)
    return int(counters["stats"]["unique_graphs"]) if counters is not None else 0


def _short_node(name: str) -> str:
    """How PyTorch names a node in its version message: ``AddBackward0`` -> ``Add``."""
    return re.sub(r"Backward\d*$", "", name) or name


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    """The shape for a report; () for tensors without one (a strided nested tensor)."""
    try:
        return tuple(int(s) for s in t.shape)
    except (RuntimeError, TypeError, ValueError):
        return ()


def _fingerprint(t: torch.Tensor) -> int:
    """CRC32 of the tensor's bytes (writes that bypass PyTorch; bytes a write restored);
    `_UNREADABLE` for tensors whose bytes cannot be read (meta, fake, storage-less
    subclasses), which then count as changed by any overlapping write."""
    try:
        return _crc(t)
    except Exception:  # noqa: BLE001 - a tensor kind we cannot read
        return _UNREADABLE


_UNREADABLE = -1  # never a CRC32 (those are unsigned)
_SKIPPED = -2  # not taken: the record's conflict was already known (`_known_everywhere`)
# Records judged at unpack by `_check` (where the shortcut is honoured); a checkpointed
# region's reads are judged by `gradguard._detect.checkpoint` instead.
_SHORTCUT_KINDS = frozenset({"saved", "ctx", "checkpoint"})
_state = intercept.state  # per-thread interception state (`unread` during batch norm)
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # no subclass whose data_ptr could mislead


# A read-only memoryview over raw memory, to CRC a CPU tensor's bytes in place: no copy
# (a multi-GB weight is read where it lies) and no ctypes array type made per size (which
# would pile up with varying shapes). Our own prototype: ctypes.pythonapi's shared one
# is left as it is.
_memory = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)(
    ("PyMemoryView_FromMemory", ctypes.pythonapi))
_READ = 0x100  # PyBUF_READ


def _crc(t: torch.Tensor) -> int:
    if t.is_cpu and type(t) in _PLAIN and t.is_contiguous():  # the common case, in short
        size = t.nbytes
        start = int(t.storage_offset()) * t.element_size()
        storage = t.untyped_storage()
        if storage.nbytes() < start + size:
            return _UNREADABLE  # its storage was freed (resized to 0): nothing to read
        if size == 0:
            return 0
        return zlib.crc32(_memory(storage.data_ptr() + start, size, _READ))
    start, end = byte_range(t)
    if not has_bytes(t, end):
        return _UNREADABLE  # its storage was freed (resized to 0): nothing to read
    if t.is_cpu and type(t) in _PLAIN and dense(t, start, end):
        # The bytes straight from memory (all of them t's: it fills its range), read in
        # place: no copy, no tensor op, no NumPy export (which would make the storage
        # non-resizable).
        if end == start:
            return 0
        base = t.untyped_storage().data_ptr()
        return zlib.crc32(_memory(base + start, end - start, _READ))
    with torch.no_grad():
        flat = t.detach()
        if flat.device.type != "cpu":
            flat = flat.cpu()
        flat = flat.contiguous().reshape(-1)
        if flat.dtype is torch.bool:
            flat = flat.to(torch.uint8)
        if flat.untyped_storage()._cdata == t.untyped_storage()._cdata:
            # .numpy() on the tensor's own storage would make it non-resizable (FSDP
            # resizes its parameters' storages): read a private copy.
            flat = flat.clone()
        return zlib.crc32(flat.view(torch.uint8).numpy().tobytes())


class DetectSession(Session):
    """A running sanitizer: use as a context manager or a decorator.

    Attributes:
        conflicts: the confirmed `Conflict`s, deduplicated by write site and save site.
        coverage_gaps: places gradguard could not check (foreign saved-tensor hooks).
        listeners: callables called with each newly recorded conflict, as it is found.
    """

    repairs = False  # copy-on-write; True for `gradguard.protect()` sessions

    def __init__(self, on_conflict: OnConflict = "raise", when: When = "backward",
                 checksum: bool = False, max_stack: int = sites.MAX_STACK) -> None:
        if on_conflict not in ("raise", "warn", "record"):
            raise ValueError(f"on_conflict must be 'raise', 'warn' or 'record', not {on_conflict!r}")
        if when not in ("backward", "write"):
            raise ValueError(f"when must be 'backward' or 'write', not {when!r}")
        if not isinstance(max_stack, int) or max_stack < 1:
            raise ValueError(f"max_stack must be a positive int, not {max_stack!r}")
        super().__init__()
        self.on_conflict = on_conflict
        self.eager = when == "write"
        self.checksum = checksum
        self.max_stack = max_stack
        self._save_stack = min(max_stack, sites.SAVE_STACK)
        self.conflicts: list[Conflict] = []
        self.coverage_gaps: list[str] = []
        self._seen: set = set()
        self._lock = threading.Lock()
        # While active: the protect session that repairs what this session saves (itself,
        # for protect()), and the session told of writes to what it saves (see on_enter).
        self.protector: Optional[DetectSession] = None
        self._watcher: Optional[Session] = None
        self._repairs_seen: set = set()
        self._built: dict[tuple, Conflict] = {}  # raw sites and storage -> its conflict
        self._dedup_keys: dict[int, tuple] = {}  # id(a conflict in _built) -> dedup_key()
        self._add = runtime.registry.add
        # ctx records -> (the code of the Function's forward, the attribute): to name the assignment
        # line when a conflict on one is reported.
        self._ctx_of: "weakref.WeakKeyDictionary[SavedRecord, tuple[Any, str]]" = (
            weakref.WeakKeyDictionary())
        # Called with each conflict newly recorded here (after deduplication) that does not
        # stop the program (`gradguard run` streams its SUMMARY line).
        self.listeners: list[Callable[[Conflict], Any]] = []

    # -- lifecycle --------------------------------------------------------------------
    def on_enter(self) -> None:
        parent = self.parent
        if parent is None:
            self._note_existing_hooks()
        self.protector = self if self.repairs else getattr(parent, "protector", None)
        # Copy-on-write must see every write first (it keeps the bytes); else this session
        # watches, to keep evidence of the saved bytes before the first overlapping write.
        self._watcher = self.protector or self

    def on_exit(self) -> None:
        self.protector = None
        self._watcher = None

    # -- reporting ------------------------------------------------------------------
    def report(self, color: bool = False) -> str:
        """The text report of every conflict found so far ('' when none)."""
        from gradguard._explain.text import render_text

        return render_text(self.conflicts, self.coverage_gaps, color=color)

    def to_dict(self, run: Optional[dict[str, Any]] = None,
                children: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        """The JSON-ready report (schema: `gradguard._findings.schema`); ``run`` and
        ``children``: the blocks `gradguard run` adds (target, exit code, rank; the child
        processes' reports)."""
        from gradguard._findings.schema import report_to_dict

        return report_to_dict(self.conflicts, self.coverage_gaps, run=run, children=children)

    def trailer_lines(self) -> list[str]:
        """Lines `gradguard run` prints after the conflicts (protect: what was copied)."""
        return []

    def draw(self, path: Any, engine: str = "auto") -> Any:
        """Write an SVG of the autograd graph around each conflict to ``path`` (Graphviz
        ``dot`` when present, else a built-in layout; ``.dot``/``.gv`` for the source)."""
        from gradguard._explain.picture import draw

        return draw(self.conflicts, path, engine=engine)

    def __repr__(self) -> str:
        return (f"<gradguard.DetectSession on_conflict={self.on_conflict!r} "
                f"conflicts={len(self.conflicts)}>")

    # -- saved-tensor hooks ------------------------------------------------------------
    def pack(self, t: torch.Tensor) -> Any:
        # Once per saved tensor: the hottest path gradguard has (kept to one call deep).
        try:
            unread = _state.unread
            if unread is not None and t.grad_fn is None and storage_key(t) in unread:
                # Saved, but backward never reads its values (a training-mode batch norm's
                # running statistics): held as PyTorch holds it, with nothing to check.
                return t
            stack, entry = capture_save(2, self._save_stack)  # entry: torch code that saved
            try:
                version = t._version
            except RuntimeError:  # inference tensors have no version counter: no check
                return t
            # Leaves are held as themselves (as PyTorch does); other tensors detached, since
            # an output saved by its own node would otherwise form an uncollectable cycle.
            grad_fn = t.grad_fn  # None exactly for leaves
            if grad_fn is None:
                rec = SavedRecord(t, version, None, self, stack)
            else:
                rec = SavedRecord(t.detach(), version, None, self, stack)
                rec.fresh = not t._is_view()
                rec.source = weakref.ref(t)
                rec.output_nr = t.output_nr
                rec.grad_fn_id = id(grad_fn)
            rec.inner = entry
            rec.producer = type(grad_fn)
            rec.watcher = self._watcher
            self._add(rec)  # takes its storage key now, while the tensor is in cache
            if self.checksum:
                rec.checksum = _fingerprint(t)
            return rec
        except Exception as exc:  # noqa: BLE001 - saved as PyTorch would, unchecked
            runtime.internal_error("a saved tensor", exc)
            return t

    def unpack(self, rec: Any) -> torch.Tensor:
        if not isinstance(rec, SavedRecord):
            return rec
        t = rec.tensor
        source = rec.source
        if source is not None:
            original = source()
            if (original is not None and original.grad_fn is None
                    and not isinstance(torch._C._current_autograd_node(), BackwardCFunction)):
                # PyTorch's own check, which hooks switch off (SavedVariable::unpack); stock
                # PyTorch makes it for built-in nodes only, not a custom Function's.
                raise RuntimeError(_DETACHED_IN_PLACE)
        if t._version != rec.version or rec.writes is not None or rec.checksum is not None:
            try:
                return self._check(rec, t)
            except GradguardError:
                raise
            except Exception as exc:  # noqa: BLE001 - backward goes on as without us
                runtime.internal_error("the report on a saved tensor at backward", exc)
                if t._version != rec.version and rec.kind != "ctx":
                    # Our hooks switched PyTorch's version check off: never lose its error
                    # because our report could not be built.
                    raise RuntimeError(self._stock_line(t, rec, None)) from exc
        return t

    def _check(self, rec: SavedRecord, t: torch.Tensor) -> torch.Tensor:
        watcher = rec.watcher
        if watcher is not None:
            kept = watcher.kept_tensor(rec)
            if kept is not None:
                if kept is not t:  # copy-on-write kept the saved bytes: backward gets them
                    self._repaired(rec)
                return kept
        if rec.checksum == _SKIPPED and t._version == rec.version:
            return t  # its conflict was known everywhere at the write: nothing to judge
        if self._known_everywhere(rec, t):
            return t
        damage = self._damage(rec, t)
        if damage is not None:
            self.confirm(rec, outside=damage == "outside")
        return t

    def _known_everywhere(self, rec: SavedRecord, t: torch.Tensor,
                          write: Optional[WriteRecord] = None) -> bool:
        """Whether confirming ``rec`` could only find a conflict already reported to this
        session and every enclosing one: one overlapping write (``write``, when asked
        at that write), the version unmoved, and neither raising nor eager. Then the
        fingerprints and the report are skipped -- the answer would change nothing
        (delivering a known conflict in "record"/"warn" mode is a no-op) -- which is what
        keeps a training loop with the same silent write in every step cheap
        (`benchmarks/conflict_path.py`). The price, when taken at a write: no fingerprint
        of the saved bytes exists, so a later write from another site to the same record
        in that step is not judged (reported neither way)."""
        if self.on_conflict == "raise" or self.eager or t._version != rec.version:
            return False
        if write is None:
            timeline = rec.extra
            if not isinstance(timeline, _Timeline) or len(timeline.hits) != 1 or not rec.writes:
                return False
            write = rec.writes[timeline.hits[0]][0]
        known = self._built.get(_raw_key(_KIND_OF_RECORD[_record_kind(rec)], write, rec, t))
        if known is None:
            return False
        seen = self._dedup_keys.get(id(known))
        if seen is None:
            seen = self._dedup_keys[id(known)] = known.dedup_key()  # known stays in _built
        if self.parent is None:
            return seen in self._seen
        return all(seen in session._seen for session in self.enclosing()
                   if isinstance(session, DetectSession))

    @staticmethod
    def _damage(rec: SavedRecord, t: torch.Tensor) -> Optional[str]:
        """"version" when the version moved (stock PyTorch rejects it), "bytes" when
        intercepted writes changed the saved bytes without moving it, "outside" when the
        bytes changed with no intercepted write (``checksum=True``), else None. Writes
        that restored the bytes exactly (gradcheck, EMA store/restore, FSDP re-gathering
        the same values) leave no damage: bytes, not writes, decide."""
        if t._version != rec.version:
            return "version"
        if rec.checksum is None or rec.checksum == _SKIPPED:
            return None
        if rec.checksum != _UNREADABLE and _fingerprint(t) == rec.checksum:
            return None
        return "bytes" if any(hit for _, hit in rec.writes or ()) else "outside"

    @staticmethod
    def bytes_changed(rec: SavedRecord) -> bool:
        """Whether an intercepted write changed the bytes ``rec`` saved (the fingerprint
        taken before the first overlapping write differs now); False when none was
        taken or the bytes cannot be read: no claim without evidence."""
        if rec.checksum is None or rec.checksum in (_UNREADABLE, _SKIPPED):
            return False
        return _fingerprint(rec.tensor) != rec.checksum

    def _repaired(self, rec: SavedRecord) -> None:
        """Report a conflict copy-on-write repaired: once per write site and save site."""
        hits = [w for w, hit in rec.writes or () if hit]
        key = (sites.stack_key(rec.stack), sites.stack_key(hits[0].stack) if hits else None,
               rec.kind)
        with self._lock:
            if key in self._repairs_seen:
                return
            self._repairs_seen.add(key)
        self.confirm(rec, repaired=True)

    # -- writes: evidence of the saved bytes, and when="write" ---------------------------
    def before_writes(self, write: WriteRecord, records: Sequence[SavedRecord]) -> Any:
        for rec in records:
            if not (rec.writes and rec.writes[-1][1]):
                continue  # elsewhere in the storage: no saved byte changes
            if self.eager and rec.owner is self:
                self.confirm(rec, pending=write)
            timeline = rec.extra
            if timeline is None:
                timeline = rec.extra = _Timeline()
            unmoved = rec.tensor._version == rec.version
            if rec.checksum is None:
                if not unmoved:
                    pass
                elif (not timeline.hits and rec.kind in _SHORTCUT_KINDS
                      and isinstance(rec.owner, DetectSession)
                      and rec.owner._known_everywhere(rec, rec.tensor, write)):
                    # Its conflict is known everywhere: no evidence can add to it. Without a
                    # fingerprint, a later write to it cannot be judged: none is reported.
                    rec.checksum = _SKIPPED
                else:  # the saved bytes, before the first write that may change them
                    rec.checksum = _fingerprint(rec.tensor)
            elif rec.checksum == _SKIPPED:
                pass
            elif timeline.hits and timeline.first_change is None and unmoved:
                # Did the previous overlapping write change the saved bytes? (One fingerprint
                # a write, taken before the next one, instead of one after each.)
                if _fingerprint(rec.tensor) != rec.checksum:
                    timeline.first_change = timeline.hits[-1]
            timeline.hits.append(len(rec.writes) - 1)
            timeline.before.append(rec.tensor._version)
        return None

    # -- confirming and delivering conflicts ---------------------------------------------
    def confirm(self, rec: SavedRecord, *, pending: Optional[WriteRecord] = None,
                outside: bool = False, node_name: Optional[str] = None,
                repaired: bool = False) -> None:
        """Gather the facts of the conflict on ``rec``, build it, deliver it, and raise or
        warn as configured."""
        t = rec.tensor
        moved = t._version != rec.version
        node = torch._C._current_autograd_node() if pending is None else None
        if node_name is None and pending is None:
            node_name = type(node).__name__ if node is not None else None
        writes = [pending] if pending is not None else [w for w, _ in rec.writes or ()]
        hits = [w for w, hit in rec.writes or () if hit] if pending is None else [pending]
        write = self._culprit(rec, hits, moved) if pending is None else pending
        if write is None and writes:
            write = writes[-1]
        if _record_kind(rec) != rec.kind:
            rec.kind, rec.label = "checkpoint", "torch.utils.checkpoint"
        kind = "saved-tensor-mutated-outside-pytorch" if outside else _KIND_OF_RECORD[rec.kind]
        # Stock PyTorch checks neither ctx attributes nor what a checkpointed region reads.
        fatal = (moved and pending is None and rec.kind not in ("ctx", "checkpoint-read")
                 and not repaired)

        # Deduplicate before building anything: the same write site, save site and storage
        # found again (every step of a training loop) costs a dict lookup, not a report.
        raw_key = _raw_key(kind, write, rec, t, repaired, pending is not None)
        known = self._built.get(raw_key)
        if known is not None:
            self._deliver(known, fatal=fatal, stock_line=self._stock_line(t, rec, node_name)
                          if fatal else None)
            return

        if pending is not None and rec.kind == "saved":
            # At the write no backward node is running to say who saved it: search for it.
            node_name = saving_node(rec, sites.live_user_frames(2))
        saver_op = rec.label or forward_op(node_name)
        saved = SavedBy(op=saver_op, node=node_name, stack=sites.resolve(rec.stack))
        ctx_line = None
        if rec.kind == "ctx":
            forward, attr = self._ctx_of.get(rec, (None, ""))
            ctx_line = sites.ctx_assignment(forward, attr) if forward is not None else None
            saved.assigned = ctx_line  # the line to change, inside the Function's forward
        name, is_param = (None, False) if rec.fresh else module_path(t)
        tensor = TensorInfo(
            dtype=str(t.dtype), shape=_shape(t), device=str(t.device),
            version_saved=rec.version, version_now=t._version, name=name,
            produced_by=(rec.producer.__name__
                         if rec.producer is not None and rec.producer is not type(None) else None),
            is_parameter=is_param,
        )
        mutation = None
        s_start, s_end = byte_range(t) if storage_key(t) is not None else (0, 0)
        aliasing: dict[str, Any] = {"same_storage": None, "saved_bytes": [s_start, s_end]}
        if write is not None:
            # Saved bytes changed but the version did not: the write went through an
            # alias with its own version counter (`.data`), or a kernel that bumps none.
            silent = bool(hits) and not moved and pending is None
            alias = ".data" if silent and ".data" in sites.source_of(write.stack) else None
            mutation = Mutation(
                op=write.op, stack=sites.resolve(write.stack),
                via="torch.optim" if sites.called_through(write.entry, _OPTIM_PATH) else None,
                alias=alias,
            )
            aliasing = {
                "same_storage": True,
                "written_bytes": [write.start, write.end],
                "saved_bytes": [s_start, s_end],
                "whole_tensor_write": write.whole,
            }
        overlap = None if outside or write is None else bool(hits)

        backward_src = None
        if pending is None:
            frame = sites.innermost_user_frame(2)
            if frame is not None:
                backward_src = sites.resolve(((frame.f_code, frame.f_lasti),))[0].source
        user = mutation.user_site if mutation else None
        during = _during(write.node, write.during) if write is not None else _NOT_DURING
        facts = Facts(
            kind=kind, what=f"`{name}`" if name else tensor.short(), node=node_name,
            saver_op=saver_op, label=rec.label, version_saved=rec.version,
            version_now=t._version, write_op=mutation.op if mutation else None,
            write_source=user.source if user else None,
            library_source=(mutation.site.source if mutation and mutation.site is not None
                            and user is not mutation.site else None),
            alias=mutation.alias if mutation else None,
            via_optimizer=bool(mutation and mutation.via == "torch.optim"),
            backward_source=backward_src, repaired=repaired, pending=pending is not None,
            ctx_source=ctx_line.source if ctx_line is not None else None,
            compiled=write is None and moved and compiled_graphs() > 0,
            backward_node=during[0], recompute_call=during[1], recompute_source=during[2],
            recompute_reentrant=during[3],
        )
        detail, fix = catalogue_kind(kind).sentences(facts)
        conflict = Conflict(kind=kind, write=mutation, saved=saved, tensor=tensor,
                            overlap=overlap, aliasing=aliasing, fix=fix,
                            detail=detail, repaired=repaired,
                            writes=self._timeline(rec, hits, write) if pending is None else [])
        # The picture's neighbourhood, as names only (no tensors, no nodes kept).
        conflict.graph = capture_graph(node, rec, conflict)
        with self._lock:
            self._built[raw_key] = conflict
        # A moved version is what stock PyTorch rejects (it checks everything saved, but
        # not ctx attributes): reject it in every mode.
        self._deliver(conflict, fatal=fatal, stock_line=self._stock_line(t, rec, node_name)
                      if fatal else None)

    def _timeline(self, rec: SavedRecord, hits: list[WriteRecord],
                  named: Optional[WriteRecord]) -> list[Mutation]:
        """Every write that overlapped the saved bytes, in order, when there was more
        than one (the report's WRITES section)."""
        if len(hits) < 2:
            return []
        versions = {}
        timeline = rec.extra if isinstance(rec.extra, _Timeline) else None
        if timeline is not None and rec.writes:
            versions = {id(rec.writes[i][0]): after
                        for i, (_before, after) in timeline.after_each(rec.tensor._version)}
        out = []
        for w in hits:
            site = sites.resolve(w.stack[:1])
            note = f"version {versions[id(w)]} after it" if id(w) in versions else ""
            if w is named:
                note = (note + "; " if note else "") + "the write this report names"
            out.append(Mutation(op=w.op, stack=site, note=note or None))
        return out

    @staticmethod
    def _culprit(rec: SavedRecord, hits: list[WriteRecord], moved: bool) -> Optional[WriteRecord]:
        """The write to name: the first that changed the saved bytes (silent case), or the
        first that moved the version (what PyTorch complains about), else the first that
        overlapped them."""
        timeline = rec.extra if isinstance(rec.extra, _Timeline) else None
        if timeline is not None and rec.writes and timeline.hits:
            if moved:
                for index, (before, after) in timeline.after_each(rec.tensor._version):
                    if before != after:
                        return rec.writes[index][0]
            elif timeline.first_change is not None:
                return rec.writes[timeline.first_change][0]
            else:  # the earlier writes left the saved bytes as they were: the last changed them
                return rec.writes[timeline.hits[-1]][0]
        return hits[0] if hits else None

    @staticmethod
    def _stock_line(t: torch.Tensor, rec: SavedRecord, node_name: Optional[str]) -> str:
        """PyTorch's own sentence for this version mismatch, word for word: the producer
        named is the saving node for a saved output, the tensor's current grad_fn for a
        saved input, none for a leaf."""
        which = ""
        if rec.source is not None:
            node = torch._C._current_autograd_node()
            if node is not None and id(node) == rec.grad_fn_id:
                which = f", which is output {rec.output_nr} of {_short_node(type(node).__name__)},"
            else:
                original = rec.source()
                grad_fn = getattr(original, "grad_fn", None)
                if grad_fn is not None:
                    which = (f", which is output {original.output_nr} of "
                             f"{_short_node(grad_fn.name())},")
        return (
            "one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: [{t.type()} {list(_shape(t))}]{which} is at version "
            f"{t._version}; expected version {rec.version} instead."
        )

    def _record(self, conflict: Conflict) -> list["DetectSession"]:
        """Add to this session and every enclosing active one, once per write and save
        site; return the sessions it was new to."""
        key = conflict.dedup_key()
        new = []
        for session in self.enclosing():
            if not isinstance(session, DetectSession):
                continue
            with session._lock:
                if key not in session._seen:
                    session._seen.add(key)
                    session.conflicts.append(conflict)
                    new.append(session)
        return new

    def _deliver(self, conflict: Conflict, *, fatal: bool = False,
                 stock_line: Optional[str] = None) -> None:
        new_to = self._record(conflict)
        if fatal or (self.on_conflict == "raise" and not conflict.repaired):
            from gradguard._explain.text import render_text

            message = render_text([conflict], ())
            if stock_line:
                message = f"{stock_line}\n\n{message}"
            raise InplaceConflictError(message, [conflict])
        if self.on_conflict == "warn" and self in new_to:  # once per conflict, not per step
            message = f"gradguard: {conflict.summary()}: {conflict.detail}. Fix: {conflict.fix}"
            site = (conflict.write.user_site if conflict.write else None) or (
                conflict.saved.user_site if conflict.saved else None)
            if site is None:
                warnings.warn(message, InplaceConflictWarning, stacklevel=2)
            else:  # attribute the warning to the user's line, not to gradguard's
                warnings.warn_explicit(message, InplaceConflictWarning, site.file, site.line)
        for listener in [f for session in new_to for f in session.listeners]:
            listener(conflict)

    # -- PyTorch's own in-place errors, explained ----------------------------------------
    def on_write_error(self, kind: str, op: str, exc: BaseException, args: tuple) -> None:
        stack, _ = sites.capture(3, self.max_stack, sites.MAX_WALK)
        mutation = Mutation(op=op, stack=sites.resolve(stack))
        t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        source = mutation.user_site.source if mutation.user_site else ""
        message = str(exc)
        found = origin.Found()
        try:
            frames = sites.live_user_frames(2)
            if kind == "out-requires-grad":
                t, found = origin.out_target(args, frames, source)
            elif t is not None and kind in ("leaf-inplace", "leaf-view-inplace"):
                found.origin = origin.leaf(t, module_path(t)[0], frames, source)
            elif t is not None and kind in ("multi-output-view-inplace", "function-view-inplace"):
                found = origin.view(kind, t, frames, source, message)
        except Exception as err:  # noqa: BLE001 - the report goes out without it
            runtime.internal_error("where a tensor PyTorch refused to write came from", err)
        tensor = None
        name = None
        if t is not None:
            name, is_param = module_path(t)
            tensor = TensorInfo(dtype=str(t.dtype), shape=_shape(t), device=str(t.device),
                                name=name, is_parameter=is_param)
        what = name or found.var
        # What the origin search found wins (for a write into a view's base it names that
        # earlier write, not the line PyTorch raised at).
        fields: dict[str, Any] = {"write_op": op, "write_source": source or None}
        fields.update(found.facts)
        facts = Facts(kind=kind, what=f"`{what}`" if what else (tensor.short() if tensor else ""),
                      pytorch_error=message.splitlines()[0] if message else "", **fields)
        node = torch._C._current_autograd_node()
        if node is not None:
            during = _during(type(node).__name__, _state.during)
            facts = dataclasses.replace(facts, backward_node=during[0],
                                        recompute_call=during[1], recompute_source=during[2],
                                        recompute_reentrant=during[3])
        self._explain(exc, facts, mutation, tensor, found.origin)

    def _explain(self, exc: BaseException, facts: Facts, write: Optional[Mutation],
                 tensor: Optional[TensorInfo], found_origin: list) -> None:
        """Record PyTorch's own error as a finding, and add its report to the error."""
        detail, fix = catalogue_kind(facts.kind).sentences(facts)
        conflict = Conflict(kind=facts.kind, write=write, tensor=tensor, fix=fix,
                            detail=detail, origin=found_origin)
        self._record(conflict)
        from gradguard._explain.text import render_text

        if hasattr(exc, "add_note"):
            exc.add_note("\n" + render_text([conflict], ()))

    def on_exception(self, exc: BaseException) -> None:
        """PyTorch's error for a view from split/chunk/unbind (or a custom Function) whose
        base was written in place after the view was made: raised where the view is next
        used, by any op (no write to intercept there), so explained as it leaves the
        session: the view, the line that made it and the write into its base. Never
        raises: the user's exception goes on as it is."""
        if not isinstance(exc, RuntimeError):
            return
        try:
            self._explain_exception(exc)
        except Exception as err:  # noqa: BLE001 - the error goes on, unexplained
            runtime.internal_error("the explanation of an error leaving the session", err)

    def _explain_exception(self, exc: RuntimeError) -> None:
        message = str(exc)
        if (origin._BASE_WRITTEN not in message
                or any("==== gradguard:" in n for n in getattr(exc, "__notes__", ()))):
            return
        kind = next((k for needle, k in WRITE_ERRORS if needle in message), None)
        if kind not in ("multi-output-view-inplace", "function-view-inplace"):
            return
        frames = sites.traceback_user_frames(exc.__traceback__)
        stack = sites.resolve(tuple((f.f_code, f.f_lasti) for f in frames))
        source = stack[0].source if stack else ""
        view = origin.refused_view(frames, source, message)
        if view is None:
            return
        tensor = TensorInfo(dtype=str(view.dtype), shape=_shape(view), device=str(view.device))
        found = origin.view(kind, view, frames, source, message)
        write = found.write
        mutation = (Mutation(op=found.facts.get("write_op") or "?", stack=[write])
                    if write is not None else None)
        facts = Facts(kind=kind, what=f"`{found.facts.get('view')}`",
                      pytorch_error=message.splitlines()[0], **found.facts)
        self._explain(exc, facts, mutation, tensor, found.origin)

    # -- coverage beyond save_for_backward --------------------------------------------------
    def on_function_applied(self, cls: type, out: Any) -> None:
        """Register tensors a custom autograd.Function stored as ctx attributes."""
        outs = out if isinstance(out, (tuple, list)) else (out,)
        node = None
        for o in outs:
            if isinstance(o, torch.Tensor) and o.grad_fn is not None:
                node = o.grad_fn
                break
        if node is None or not hasattr(node, "__dict__"):
            return
        if cls is _REENTRANT_CHECKPOINT and callable(node.__dict__.get("run_function")):
            # Its backward reruns the function: writes there name this call (`_during`).
            label = checkpoint.Recomputation(sites.capture(3, 1)[0], reentrant=True)
            node.__dict__["run_function"] = checkpoint.labelled(node.__dict__["run_function"], label)
        # (attribute, index in a tuple/list attribute or None, tensor)
        found: list[tuple[str, Optional[int], torch.Tensor]] = []
        for attr, value in list(vars(node).items()):
            if isinstance(value, torch.Tensor):
                found.append((attr, None, value))
            elif isinstance(value, (tuple, list)):
                found.extend((attr, i, v) for i, v in enumerate(value)
                             if isinstance(v, torch.Tensor))
        if not found:
            return
        tracked = [(new_record(v, self, self._watcher, "ctx",
                               f"{cls.__name__}.forward (ctx.{attr})", skip=4), attr, i)
                   for attr, i, v in found if not v.is_inference()]
        node.__dict__["_gradguard_ctx_records"] = [rec for rec, _, _ in tracked]
        # The code object, not the function: a value must not hold the record alive
        # (through the function's globals), or the weak key never dies.
        forward = getattr(cls, "forward", None)
        forward = getattr(inspect.unwrap(forward), "__code__", None) if forward else None
        for rec, attr, _ in tracked:
            self._ctx_of[rec] = (forward, attr)
        node_name = type(node).__name__
        node_ref = weakref.ref(node)  # the hook lives on the node: no cycle through C++

        def check_ctx(grad_outputs: Any) -> None:
            for rec, attr, i in tracked:
                t = rec.tensor
                kept = rec.watcher.kept_tensor(rec) if rec.watcher is not None else None
                if kept is not None:
                    if kept is not t:
                        _put_back(node_ref(), attr, i, kept)  # protect(): the kept copy
                        rec.owner._repaired(rec)
                elif rec.owner._damage(rec, t) is not None:
                    rec.owner.confirm(rec, node_name=node_name)

        node.register_prehook(check_ctx)

    def on_step_aside(self, reason: str, where: str) -> None:
        region = ("torch.func transform" if "torch.func" in reason
                  else "disable_saved_tensors_hooks region")
        self._gap(f"tensors saved inside the {region} entered at {where} are not checked: it "
                  "refuses saved-tensor hooks, so gradguard stepped aside for its extent")

    def on_internal_error(self, what: str, exc: BaseException) -> None:
        self._gap(f"gradguard could not check {what}: its bookkeeping failed "
                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the "
                  "program went on as without gradguard (an error PyTorch itself would raise "
                  "there is still raised)")

    def on_foreign_hooks(self, hooks: Any, where: str) -> None:
        if type(hooks).__name__ in _CHECKPOINT_HOOKS:
            if type(hooks).__name__ == "_checkpoint_hook":
                checkpoint.on_enter(self, hooks)
            return
        if type(hooks).__name__ == "SavedTensor":
            self._gap(f"register_hooks on a saved tensor at {where} was refused: every saved "
                      "tensor carries gradguard's hooks inside a session, and PyTorch allows "
                      "one pair per saved tensor")
            return
        self._gap(f"saved tensors packed under {type(hooks).__name__} (entered at {where}) are "
                  "not checked: those hooks replace gradguard's while active"
                  + ("; save_on_cpu copies CUDA tensors at save time, but keeps CPU tensors "
                     "as they are, unchecked (PyTorch skips its version check under hooks)"
                     if type(hooks).__name__ == "save_on_cpu" else ""))

    def on_foreign_hooks_exit(self, hooks: Any) -> None:
        if type(hooks).__name__ == "_checkpoint_hook":
            checkpoint.on_exit(hooks)

    def _note_existing_hooks(self) -> None:
        top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
        if top_hooks is not None and top_hooks(False) is not None:
            self._gap("detect() was entered inside other saved-tensor hooks (such as "
                      "save_on_cpu); gradguard's hooks replace them inside detect()")

    def _gap(self, text: str) -> None:
        with self._lock:
            if text not in self.coverage_gaps:
                self.coverage_gaps.append(text)


def _raw_key(kind: str, write: Optional[WriteRecord], rec: SavedRecord, t: torch.Tensor,
             repaired: bool = False, pending: bool = False) -> tuple:
    """What deduplicates a conflict before anything is built (`DetectSession._built`): its
    kind, the raw write and save sites, the storage, and how it was found."""
    return (kind, sites.site_key(write.stack) if write is not None else None,
            sites.site_key(rec.stack),
            rec.key if rec.key is not None else storage_key(t), repaired, pending)


def _record_kind(rec: SavedRecord) -> str:
    """The record's kind, with non-reentrant checkpoint's saves of its inputs told apart: it
    recomputes from them, so a write through `.data` there silently changes the
    recomputed forward."""
    if rec.kind == "saved" and sites.called_through(rec.inner, _CHECKPOINT_PATH):
        return "checkpoint"
    return rec.kind


_REENTRANT_CHECKPOINT = torch.utils.checkpoint.CheckpointFunction
_NOT_DURING: tuple[Optional[str], Optional[str], Optional[str], bool] = (None, None, None, False)


def _during(node: Optional[str], label: Any
            ) -> tuple[Optional[str], Optional[str], Optional[str], bool]:
    """For a write made while the backward of ``node`` ran (`WriteRecord.node`): the node,
    and, when a checkpoint was recomputing its region then (the write's label), the
    checkpoint call's "file:line", its source and whether it is reentrant."""
    if not isinstance(label, checkpoint.Recomputation) or not label.stack:
        return node, None, None, False
    site = sites.resolve(label.stack)[0]
    return node, f"{site.file}:{site.line}", site.source or None, label.reentrant


class _Timeline:
    """detect()'s own per-record state (``record.extra``): the overlapping writes (indexes
    into ``record.writes``) with the version before each, and the first write after which
    the saved bytes differed from what was saved."""

    __slots__ = ("hits", "before", "first_change")

    def __init__(self) -> None:
        self.hits: list[int] = []
        self.before: list[int] = []
        self.first_change: Optional[int] = None

    def after_each(self, now: int) -> list[tuple[int, tuple[int, int]]]:
        """(write index, (version before it, version after it)) for each overlapping
        write; the version after the last is the tensor's version now."""
        after = [*self.before[1:], now]
        return [(i, (b, a)) for i, b, a in zip(self.hits, self.before, after)]


def _put_back(node: Any, attr: str, index: Optional[int], value: torch.Tensor) -> None:
    """Replace a ctx attribute (or one item of a tuple/list attribute) before backward."""
    if index is None:
        setattr(node, attr, value)
        return
    items = list(getattr(node, attr))
    items[index] = value
    old = getattr(node, attr)
    setattr(node, attr, type(old)(items) if isinstance(old, tuple) else items)


@overload
def detect(func: F) -> F: ...
@overload
def detect(func: None = None, *, on_conflict: OnConflict = "raise", when: When = "backward",
           checksum: bool = False, max_stack: int = sites.MAX_STACK) -> DetectSession: ...


def detect(func: Optional[Callable] = None, *, on_conflict: OnConflict = "raise",
           when: When = "backward", checksum: bool = False,
           max_stack: int = sites.MAX_STACK) -> Any:
    """Run code under the in-place write sanitizer.

    ``on_conflict``: "raise" (raise `InplaceConflictError` where backward needs the damaged
    tensor), "warn", or "record" (collect in ``session.conflicts``). A write whose tensor
    version moved always raises, as stock PyTorch would; "warn"/"record" only continue
    past the silent cases (``.data`` writes, ctx attributes, checkpoint inputs).
    ``when="write"`` stops at the write itself, before data is lost (for a debugger); it
    can also flag writes into graphs that are never backwarded.
    ``checksum=True`` fingerprints saved tensors to catch writes that bypass PyTorch.
    """
    session = DetectSession(on_conflict=on_conflict, when=when, checksum=checksum,
                            max_stack=max_stack)
    if func is not None:
        return session(func)
    return session


DetectSession.__module__ = detect.__module__ = "gradguard"
