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
from typing import Any, Callable, Optional, TypeVar, overload

from gradguard._findings.model import Frame
from gradguard._core import sites
from gradguard._core.registry import SavedRecord, WriteRecord
from gradguard._detect.session import DetectSession, OnConflict

F = TypeVar("F", bound=Callable[..., Any])


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
        self._sites: dict[tuple, list] = {}  # (op, write stack, save stack) -> [count, bytes]
        self._copy_lock = threading.Lock()

    def account_copy(self, rec: SavedRecord, write: Optional[WriteRecord], nbytes: int) -> None:
        """Called by the write interception for each copy made (``write`` None: undone)."""
        session: Optional[DetectSession] = self
        while session is not None:  # enclosing protect sessions count it too
            if isinstance(session, ProtectSession):
                session._count(rec, write, nbytes)
            session = session._parent

    def _count(self, rec: SavedRecord, write: Optional[WriteRecord], nbytes: int) -> None:
        with self._copy_lock:
            self.copied_bytes += nbytes
            if write is None:
                self.copies -= 1 if nbytes else 0
                return
            if nbytes:
                self.copies += 1
            site = self._sites.setdefault((write.op, write.stack[:1], rec.stack[:1]), [0, 0])
            site[0] += 1 if nbytes else 0  # records sharing one copy count once
            site[1] += nbytes

    @property
    def copy_sites(self) -> list[CopySite]:
        with self._copy_lock:
            items = list(self._sites.items())
        out = []
        for (op, write_stack, save_stack), (count, nbytes) in items:
            if not count:
                continue  # only ever shared another site's copy
            write = sites.resolve(write_stack)
            saved = sites.resolve(save_stack)
            out.append(CopySite(op, write[0] if write else None, saved[0] if saved else None,
                                count, nbytes))
        out.sort(key=lambda c: (-c.bytes, -c.count))
        return out

    def to_dict(self) -> dict[str, Any]:
        """detect()'s schema plus ``"protect": {"copied_bytes", "copies", "copy_sites"}``."""
        data = super().to_dict()
        data["protect"] = {
            "copied_bytes": self.copied_bytes, "copies": self.copies,
            "copy_sites": [{"op": c.op, "count": c.count, "bytes": c.bytes,
                            "write": _frame_dict(c.write), "saved": _frame_dict(c.saved)}
                           for c in self.copy_sites],
        }
        return data

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


def _frame_dict(frame: Optional[Frame]) -> Optional[dict[str, Any]]:
    return None if frame is None else {"file": frame.file, "line": frame.line,
                                       "function": frame.function}


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
