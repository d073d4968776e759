"""`gradguard.protect()`: copy-on-write for tensors saved for backward.

Same machinery as `detect()` (one registry of saved tensors, one set of write patches);
the difference is at the write: just before an intercepted write touches bytes of a live
saved tensor, the saved tensor is copied once per saved version, and the unpack hook hands
backward that copy. Writes that touch no saved bytes copy nothing; the copy dies with the
graph, like the saved tensor would have.

A protected record is repaired only when every change since the save was a write we
intercepted (its expected version is tracked write by write). A write we could not see
(C++ internals, compiled regions, NumPy views) leaves nothing to restore from, so the
program is rejected as stock PyTorch would reject it, with detect()'s report.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar, overload

import torch

from gradguard._core import sites
from gradguard._core.registry import SavedRecord, WriteRecord, byte_range, has_bytes
from gradguard._detect.session import DetectSession, OnConflict
from gradguard._findings.model import Frame
from gradguard._findings.schema import frame_to_dict, report_to_dict

F = TypeVar("F", bound=Callable[..., Any])


class _Kept:
    """Copy-on-write's state for one saved record (in ``record.extra``): the version the
    tensor should have if every write since the save was one we intercepted, whether a
    write we did not see changed it (then there is nothing faithful to restore), and the
    copy of the saved bytes taken just before the first write that overlapped them."""

    __slots__ = ("expected", "tainted", "copy")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.tainted = False
        self.copy: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class CopySite:
    """Where copy-on-write copied: the write that would have destroyed saved bytes, the
    line that saved them, how often and how many bytes. The hottest are the ones worth an
    explicit fix (an out-of-place op or a `.clone()`)."""

    op: str
    write: Optional[Frame]
    saved: Optional[Frame]
    count: int
    bytes: int

    def __str__(self) -> str:
        return (f"{self.bytes} bytes in {self.count} copies: {self.op} at {self.write} "
                f"over a tensor saved at {self.saved}")


class ProtectSession(DetectSession):
    """A running copy-on-write session (see `protect()`).

    Attributes, on top of `DetectSession`'s:
        copied_bytes: bytes copied so that backward sees the saved values.
        copies: number of copies made.
        copy_sites: `CopySite`s, most bytes first.
        conflicts: the conflicts repaired (``repaired=True``), or found and not repairable.
    """

    repairs = True

    def __init__(self, on_conflict: OnConflict = "record", checksum: bool = False,
                 max_stack: int = sites.MAX_STACK) -> None:
        super().__init__(on_conflict=on_conflict, when="backward", checksum=checksum,
                         max_stack=max_stack)
        self.copied_bytes = 0
        self.copies = 0
        # (op, write site, save site) -> [count, bytes, write stack, save stack]
        self._sites: dict[tuple, list] = {}
        self._copy_lock = threading.Lock()

    # -- copy-on-write (the runtime tells the watcher of each write) -----------------------
    def before_writes(self, write: WriteRecord, records: Sequence[SavedRecord]) -> Any:
        to_copy: list[SavedRecord] = []
        reads = [rec for rec in records if rec.kind == "checkpoint-read"]
        if reads:
            # What a checkpointed region reads is read again by its recomputation, from
            # the live tensor: no copy can repair it; detect()'s evidence reports it.
            DetectSession.before_writes(self, write, reads)
            records = [rec for rec in records if rec.kind != "checkpoint-read"]
        for rec in records:
            kept = rec.extra
            if kept is None:
                kept = rec.extra = _Kept(rec.version)
            if rec.tensor._version != kept.expected or (write.storage and kept.copy is None):
                # Changed by a write we did not see; or the storage is being freed: keeping
                # a copy would keep alive what the program frees (FSDP), so no repair.
                kept.tainted = True
            elif rec.writes and rec.writes[-1][1] and kept.copy is None and has_bytes(rec.tensor):
                to_copy.append(rec)
        copied = _copy_before_write(to_copy, write, self) if to_copy else []
        return records, copied

    def after_writes(self, token: Any) -> None:
        for rec in token[0]:
            kept = rec.extra
            if not kept.tainted:
                kept.expected = rec.tensor._version

    def writes_failed(self, token: Any) -> None:
        for rec, nbytes in token[1]:
            rec.extra.copy = None
            self.account_copy(rec, None, -nbytes)

    def kept_tensor(self, rec: SavedRecord) -> Optional[torch.Tensor]:
        """The copy taken before a write overwrote ``rec``'s bytes; ``rec.tensor`` itself
        when only writes elsewhere in its storage happened; None when it cannot be
        repaired (a write we did not see changed it). A copy is handed out as a copy of
        its own: the backward that gets it may write into it (a Function's backward
        reusing its saved buffer), and every other node, and the next backward through a
        retained graph, must still read the saved bytes."""
        kept = rec.extra
        if kept is None or kept.tainted or rec.tensor._version != kept.expected:
            return None
        if kept.copy is not None:
            with torch.no_grad():
                return kept.copy.clone()
        if not any(hit for _, hit in rec.writes or ()):
            return rec.tensor  # the saved bytes are intact
        return None

    def account_copy(self, rec: SavedRecord, write: Optional[WriteRecord], nbytes: int) -> None:
        """Count a copy made (``write`` None: undone) here and in enclosing protect sessions."""
        for session in self.enclosing():
            if isinstance(session, ProtectSession):
                session._count(rec, write, nbytes)

    def _count(self, rec: SavedRecord, write: Optional[WriteRecord], nbytes: int) -> None:
        with self._copy_lock:
            self.copied_bytes += nbytes
            if write is None:
                self.copies -= 1 if nbytes else 0
                return
            if nbytes:
                self.copies += 1
            key = (write.op, sites.site_key(write.stack), sites.site_key(rec.stack))
            site = self._sites.get(key)
            if site is None:
                site = self._sites[key] = [0, 0, write.stack[:1], rec.stack[:1]]
            site[0] += 1 if nbytes else 0  # records sharing one copy count once
            site[1] += nbytes

    @property
    def copy_sites(self) -> list[CopySite]:
        with self._copy_lock:
            items = list(self._sites.items())
        out = []
        for (op, _, _), (count, nbytes, write_stack, save_stack) in items:
            if not count:
                continue  # only ever shared another site's copy
            write = sites.resolve(write_stack)
            saved = sites.resolve(save_stack)
            out.append(CopySite(op, write[0] if write else None, saved[0] if saved else None,
                                count, nbytes))
        out.sort(key=lambda c: (-c.bytes, -c.count))
        return out

    def to_dict(self, run: Optional[dict[str, Any]] = None,
                children: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        """detect()'s schema plus ``"protect": {"copied_bytes", "copies", "copy_sites"}``."""
        protect = {
            "copied_bytes": self.copied_bytes, "copies": self.copies,
            "copy_sites": [{"op": c.op, "count": c.count, "bytes": c.bytes,
                            "write": frame_to_dict(c.write), "saved": frame_to_dict(c.saved)}
                           for c in self.copy_sites],
        }
        return report_to_dict(self.conflicts, self.coverage_gaps, run=run, children=children,
                              protect=protect)

    def trailer_lines(self, limit: int = 5) -> list[str]:
        """What was copied and where, hottest sites first."""
        lines = [f"gradguard: protect copied {self.copied_bytes} bytes in {self.copies} "
                 f"cop{'y' if self.copies == 1 else 'ies'}"
                 + (" (nothing saved for backward was overwritten)" if not self.copies else "")]
        sites = self.copy_sites
        lines += [f"  {site}" for site in sites[:limit]]
        if len(sites) > limit:
            lines.append(f"  ... and {len(sites) - limit} more sites (see --json)")
        return lines

    def __repr__(self) -> str:
        return (f"<gradguard.ProtectSession copies={self.copies} "
                f"copied_bytes={self.copied_bytes} conflicts={len(self.conflicts)}>")


def _copy_before_write(records: list[SavedRecord], write: WriteRecord,
                       protector: ProtectSession) -> list[tuple[SavedRecord, int]]:
    """Keep the bytes ``records`` saved, before ``write`` overwrites them. Returns (record,
    bytes counted) for each. Records of the same view share a copy, and a view lying inside
    an already copied contiguous saved tensor (a saved base and a view of it) is served
    from that copy, so the largest views are copied first."""
    done = []
    bases: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # start, end, src, copy
    same: dict[tuple, torch.Tensor] = {}  # exact view -> its copy
    ranged = sorted(((byte_range(r.tensor), r) for r in records),
                    key=lambda item: item[0][0] - item[0][1])
    with torch.no_grad():
        for (start, end), rec in ranged:
            t = rec.tensor
            view = (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            copy = same.get(view)
            if copy is None:
                copy = _view_of_copied_base(bases, t, start, end)
            nbytes = 0
            if copy is None:
                copy = same[view] = t.clone()
                nbytes = copy.nbytes
                if t.is_contiguous():
                    bases.append((start, end, t, copy))
            rec.extra.copy = copy
            protector.account_copy(rec, write, nbytes)
            done.append((rec, nbytes))
    return done


def _view_of_copied_base(bases: list, t: torch.Tensor, start: int, end: int
                         ) -> Optional[torch.Tensor]:
    for b_start, b_end, src, copy in bases:
        if b_start <= start and end <= b_end and src.dtype == t.dtype:
            # `copy` is a contiguous clone of `src`: the same element offsets apply.
            return copy.as_strided(t.shape, t.stride(), t.storage_offset() - src.storage_offset())
    return None


@overload
def protect(func: F) -> F: ...
@overload
def protect(func: None = None, *, on_conflict: OnConflict = "record", checksum: bool = False,
            max_stack: int = sites.MAX_STACK) -> ProtectSession: ...


def protect(func: Optional[Callable] = None, *, on_conflict: OnConflict = "record",
            checksum: bool = False, max_stack: int = sites.MAX_STACK) -> Any:
    """Run code with copy-on-write for every tensor autograd saves.

    Before an in-place write (any category `detect()` intercepts: methods, operators,
    ``x[i] = v``, ``out=``, foreach/fused optimizer steps, writes through ``.data``,
    views and bases) touches bytes of a live saved tensor, those saved bytes are copied,
    and backward uses the copy: gradients are those of the program with every saved tensor
    snapshotted at save time. The repairs are recorded as conflicts with
    ``repaired=True`` (``on_conflict="warn"`` also warns once per write and save site).

    Programs that are invalid rather than unlucky still raise with detect()'s explanation:
    in-place writes into leaves that require grad, into outputs of multi-output views, and
    writes gradguard cannot see (made from C++, inside compiled regions, or after the
    ``with`` block) to a tensor backward needs. ``checksum=True`` (as in `detect()`) also
    reports writes made outside PyTorch, which cannot be repaired.
    """
    session = ProtectSession(on_conflict=on_conflict, checksum=checksum, max_stack=max_stack)
    if func is not None:
        return session(func)
    return session


ProtectSession.__module__ = CopySite.__module__ = protect.__module__ = "gradguard"
