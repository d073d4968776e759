"""The process-wide runtime shared by every gradguard session.

One registry of live saved tensors, one set of write patches, and the stack of active
sessions. Sessions come and go; the patches stay installed while any is active.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterable, Optional

import torch

from gradguard._core import intercept, sites
from gradguard._core.registry import (
    Registry, SavedRecord, WriteRecord, byte_range, overlaps, storage_key,
)

if TYPE_CHECKING:
    from gradguard._detect.session import DetectSession

# PyTorch's in-place errors raised at the write itself, and our kind for each.
WRITE_ERRORS = (
    ("a view of a leaf Variable that requires grad is being used in an in-place",
     "leaf-view-inplace"),
    ("a leaf Variable that requires grad is being used in an in-place", "leaf-inplace"),
    ("This view is the output of a function that returns multiple views",
     "multi-output-view-inplace"),
    ("Inplace update to inference tensor outside InferenceMode", "inference-tensor-inplace"),
)


class _ThreadSessions(threading.local):
    def __init__(self) -> None:
        self.stack: list["DetectSession"] = []


class Runtime:
    def __init__(self) -> None:
        self.registry = Registry()
        self._lock = threading.RLock()
        self.sessions: list["DetectSession"] = []  # active sessions of every thread
        self._local = _ThreadSessions()  # this thread's, innermost last (saved-tensor
        # hooks are thread-local in PyTorch, so nesting is per thread too)
        self.eager_sessions = 0

    # -- sessions -----------------------------------------------------------------
    def acquire(self, session: "DetectSession") -> None:
        self._local.stack.append(session)
        with self._lock:
            self.sessions.append(session)
            if session.eager:
                self.eager_sessions += 1
            if len(self.sessions) == 1:
                intercept.install(self)
                if not _extras:
                    _patch_extras()

    def release(self, session: "DetectSession") -> None:
        stack = self._local.stack
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is session:
                del stack[i]
                break
        with self._lock:
            for i in range(len(self.sessions) - 1, -1, -1):
                if self.sessions[i] is session:
                    del self.sessions[i]
                    break
            if session.eager:
                self.eager_sessions -= 1
            if not self.sessions:
                # Patches stay, inactive (see intercept's docstring); the extras below
                # pass through when no session is active.
                intercept.deactivate()
                self.registry.sweep()

    def innermost(self) -> Optional["DetectSession"]:
        """This thread's innermost active session."""
        stack = self._local.stack
        return stack[-1] if stack else None

    # -- writes -------------------------------------------------------------------
    def before_write(self, op: str, tensors: Iterable[torch.Tensor], whole: bool) -> Any:
        """Called just before an intercepted write executes. Returns a token for
        `after_write` / `write_failed`: the records touched and the copies made."""
        registry = self.registry
        if not registry.maybe_live():
            return None
        touched: list[SavedRecord] = []
        copied: list = []  # (record, bytes counted) for the copies made
        write: Optional[WriteRecord] = None
        for t in tensors:
            key = storage_key(t)
            if key is None:
                continue
            records = registry.on_storage(key)
            if not records:
                continue
            start, end = byte_range(t)
            if write is None:
                stack, entry = sites.capture(3, records[0].owner.max_stack)
                write = WriteRecord(op, stack, entry, None, start, end, whole)
            else:
                write = WriteRecord(op, write.stack, write.entry, None, start, end, whole)
            to_copy: list[SavedRecord] = []
            intercept.state.busy = True
            try:
                for rec in records:
                    # A metadata write (`.data =`, `set_`) swaps what `t` points at; only a
                    # record holding `t` itself sees it. Saved views keep the old bytes.
                    hit = rec.tensor is t if whole else overlaps(rec.tensor, start, end, t)
                    if rec.writes is None:
                        rec.writes = []
                    rec.writes.append((write, hit))
                    touched.append(rec)
                    if rec.protector is not None:
                        if rec.tensor._version != rec.expected:
                            rec.tainted = True  # changed by a write we did not see
                        elif hit and rec.preserved is None:
                            to_copy.append(rec)
                if to_copy:
                    copied.extend(_copy_before_write(to_copy, write))
            finally:
                intercept.state.busy = False
            if self.eager_sessions:
                for rec in records:
                    if (rec.owner.eager and rec.protector is None and rec.writes
                            and rec.writes[-1][1]):
                        rec.owner.confirm(rec, pending=rec.writes[-1][0])
        return (touched, copied) if touched else None

    def after_write(self, token: Any) -> None:
        """The write happened: the versions it produced are accounted for."""
        for rec in token[0]:
            if rec.protector is not None and not rec.tainted:
                rec.expected = rec.tensor._version

    def write_failed(self, token: Any, op: str, exc: Optional[BaseException], args: tuple) -> None:
        """The write did not happen (it raised): forget it, and explain PyTorch's error."""
        if token:
            touched, copied = token
            for rec in touched:
                if rec.writes:
                    rec.writes.pop()
            for rec, nbytes in copied:
                rec.preserved = None
                rec.protector.account_copy(rec, None, -nbytes)
        if exc is None:
            return
        message = str(exc)
        for needle, kind in WRITE_ERRORS:
            if needle in message:
                session = self.innermost()
                if session is not None:
                    session.explain_write_error(kind, op, exc, args)
                return


def _copy_before_write(records: list[SavedRecord], write: WriteRecord) -> list:
    """Copy-on-write: keep the bytes ``records`` saved, before ``write`` overwrites them.
    Returns (record, bytes counted) for each. Records of the same view share a copy, and a
    view lying inside an already copied contiguous saved tensor (a saved base and a view of
    it) is served from that copy, so the largest views are copied first."""
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
            rec.preserved = copy
            rec.protector.account_copy(rec, write, nbytes)
            done.append((rec, nbytes))
    return done


def _view_of_copied_base(bases: list, t: torch.Tensor, start: int, end: int
                         ) -> Optional[torch.Tensor]:
    for b_start, b_end, src, copy in bases:
        if b_start <= start and end <= b_end and src.dtype == t.dtype:
            # `copy` is a contiguous clone of `src`: the same element offsets apply.
            return copy.as_strided(t.shape, t.stride(), t.storage_offset() - src.storage_offset())
    return None


runtime = Runtime()


# -- autograd.Function ctx attributes, other saved-tensor hooks --------------
_extras: list[tuple[Any, str, Any]] = []


def _patch_extras() -> None:
    from torch.autograd import function as autograd_function
    from torch.autograd import graph

    orig_apply = autograd_function.Function.__dict__["apply"]

    def apply(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = orig_apply.__func__(cls, *args, **kwargs)
        session = runtime.innermost()
        if session is not None and torch.is_grad_enabled():
            session.track_ctx(cls, out)
        return out

    orig_enter = graph.saved_tensors_hooks.__enter__

    def hooks_enter(self):  # type: ignore[no-untyped-def]
        session = runtime.innermost()
        if session is not None:
            session.note_foreign_hooks(self)
        return orig_enter(self)

    for owner, name, value in (
        (autograd_function.Function, "apply", classmethod(apply)),
        (graph.saved_tensors_hooks, "__enter__", hooks_enter),
    ):
        _extras.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, value)


def unpatch_all() -> None:
    """Restore every attribute gradguard patched (no session may be active)."""
    with runtime._lock:
        if runtime.sessions:
            raise RuntimeError("gradguard sessions are still active")
        intercept.uninstall()
        _unpatch_extras()


def _unpatch_extras() -> None:
    while _extras:
        owner, name, orig = _extras.pop()
        setattr(owner, name, orig)


def new_record(t: torch.Tensor, owner: Any, kind: str, label: Optional[str], skip: int) -> SavedRecord:
    """Register ``t`` as saved: for the ctx-attribute and checkpoint-input paths."""
    stack, _ = sites.capture(skip=skip)
    rec = SavedRecord(t if t.is_leaf else t.detach(), t._version, None, owner, stack,
                      kind, label)
    rec.producer = type(t.grad_fn) if t.grad_fn is not None else None
    rec.protector = getattr(owner, "protector", None)
    runtime.registry.add(rec)
    return rec
