"""The process-wide runtime shared by every gradguard session.

One registry of live saved tensors, one set of patches, and the stack of active sessions.
Sessions come and go; the patches stay installed while any is active. The runtime does the
neutral bookkeeping (which write touched which saved record, and whether it overlapped its
bytes) and tells sessions through the listener methods of `gradguard._core.session.Session`;
what a write *means* -- a conflict, a copy to make -- is the capabilities' business.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import torch

from gradguard._core import intercept, names, patching, sites
from gradguard._core.registry import (
    Registry,
    SavedRecord,
    WriteRecord,
    byte_range,
    overlaps,
    saved_span,
    storage_key,
)
from gradguard.errors import GradguardError

if TYPE_CHECKING:
    from gradguard._core.session import Session

# PyTorch's in-place errors raised at the write itself, and the kind of finding for each.
WRITE_ERRORS = (
    ("a view of a leaf Variable that requires grad is being used in an in-place",
     "leaf-view-inplace"),
    ("a leaf Variable that requires grad is being used in an in-place", "leaf-inplace"),
    ("This view is the output of a function that returns multiple views",
     "multi-output-view-inplace"),
    ("Inplace update to inference tensor outside InferenceMode", "inference-tensor-inplace"),
    ("This view was created inside a custom Function", "function-view-inplace"),
    ("functions with out=... arguments don't support automatic differentiation",
     "out-requires-grad"),
)


class GradguardHooks(torch.autograd.graph.saved_tensors_hooks):
    """gradguard's saved-tensor hooks; a subclass, so that other hooks can be told apart."""


class _ThreadSessions(threading.local):
    def __init__(self) -> None:
        self.stack: list[Session] = []


class Runtime:
    def __init__(self) -> None:
        self.registry = Registry()
        self._lock = threading.RLock()
        self.sessions: list[Session] = []  # active sessions of every thread
        self._local = _ThreadSessions()  # this thread's, innermost last (saved-tensor
        # hooks are thread-local in PyTorch, so nesting is per thread too)
        self._patches = patching.Patches()  # Function.apply, saved_tensors_hooks.__enter__
        # Watched storages (`watch`): storage key -> [Watch]; and sessions told of every
        # write (`watch_all`). `watching` is their union's truth, read by every
        # intercepted write: False, a write costs nothing more than before.
        self._watches: dict[int, list[Watch]] = {}
        self._watch_all: list[Session] = []
        self.watching = False

    # -- sessions -----------------------------------------------------------------
    def acquire(self, session: Session) -> None:
        self._local.stack.append(session)
        with self._lock:
            self.sessions.append(session)
            if len(self.sessions) == 1:
                intercept.install(self)
                if not self._patches:
                    _patch_entry_points(self._patches)

    def release(self, session: Session) -> None:
        _remove_last(self._local.stack, session)
        with self._lock:
            _remove_last(self.sessions, session)
            if not self.sessions:
                # Patches stay, inactive (see intercept's docstring); the entry-point
                # patches pass through when no session is active.
                intercept.deactivate()
                self.registry.sweep_if_large()

    def innermost(self) -> Optional[Session]:
        """This thread's innermost active session that saves tensors (`Session.saves`)."""
        stack = self._local.stack
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].saves:
                return stack[i]
        return None

    # -- watched storages ---------------------------------------------------------------
    def watch(self, tensor: torch.Tensor, watcher: Session, payload: Any) -> Optional["Watch"]:
        """Tell ``watcher`` (`Session.before_watched_write`) of every intercepted write
        overlapping ``tensor``'s bytes (by storage identity and byte range: views, bases,
        ``.data`` and ``.detach()`` aliases included), until `unwatch`. Holds ``tensor``.
        None when it has no dense storage to watch."""
        key = storage_key(tensor)
        if key is None:
            return None
        entry = Watch(tensor, key, watcher, payload)
        with self._lock:
            self._watches.setdefault(key, []).append(entry)
            self.watching = True
        return entry

    def unwatch(self, entry: "Watch") -> None:
        with self._lock:
            entries = self._watches.get(entry.key, [])
            _remove_last(entries, entry)
            if not entries:
                self._watches.pop(entry.key, None)
            self.watching = bool(self._watches or self._watch_all)

    def watch_all(self, watcher: Session) -> None:
        """Tell ``watcher`` of every intercepted write (payloads empty), until
        `unwatch_all`."""
        with self._lock:
            self._watch_all.append(watcher)
            self.watching = True

    def unwatch_all(self, watcher: Session) -> None:
        with self._lock:
            _remove_last(self._watch_all, watcher)
            self.watching = bool(self._watches or self._watch_all)

    def _tell_watchers(self, op: str, tensors: Iterable[Any], whole: bool) -> None:
        watches = self._watches
        watch_all = self._watch_all
        for t in tensors:
            if watch_all:
                for watcher in tuple(watch_all):
                    watcher.before_watched_write(op, t, whole, ())
            if not watches:
                continue
            freed = isinstance(t, torch.UntypedStorage)
            key = int(t._cdata) if freed else storage_key(t)
            entries = watches.get(key) if key is not None else None
            if not entries:
                continue
            start, end = (0, t.nbytes()) if freed else byte_range(t)
            hits: dict[int, tuple[Session, list[Any]]] = {}
            for entry in tuple(entries):
                if freed:
                    hit = True
                elif whole:  # metadata: only the tensor itself changes (see below)
                    hit = entry.tensor is t
                else:
                    hit = overlaps(entry.tensor, start, end, t)
                if hit:
                    group = hits.setdefault(id(entry.watcher), (entry.watcher, []))
                    group[1].append(entry.payload)
            for watcher, payloads in hits.values():
                watcher.before_watched_write(op, t, whole, payloads)

    # -- writes (called by the interception wrappers) --------------------------------
    def before_write(self, op: str, tensors: Iterable[torch.Tensor], whole: bool) -> Any:
        """Called just before an intercepted write executes: records the write on every
        live saved record sharing a written storage and tells their watchers. Returns a
        token for `after_write` / `write_failed`. Watchers (`watch`) are told first, and
        may stop the write by raising a `GradguardError`."""
        if self.watching:
            tensors = tuple(tensors)
            try:
                self._tell_watchers(op, tensors, whole)
            except GradguardError:
                raise
            except Exception as exc:  # noqa: BLE001 - see below
                self.internal_error(f"the write {op}", exc)
        if not self.registry.maybe_live():
            return None
        try:
            return self._before_write(op, tensors, whole)
        except GradguardError:
            raise  # a deliberate stop (when="write" in raise mode)
        except Exception as exc:  # noqa: BLE001 - our failure must not change the program
            self.internal_error(f"the write {op}", exc)
            return None

    def _before_write(self, op: str, tensors: Iterable[torch.Tensor], whole: bool) -> Any:
        if whole:
            names.index.mark_dirty()  # `.data =`, `set_`: a module's tensor may change storage
        registry = self.registry
        touched: list[SavedRecord] = []
        told: list[tuple[Session, Any]] = []
        write: Optional[WriteRecord] = None
        for t in tensors:
            freed = isinstance(t, torch.UntypedStorage)
            key = int(t._cdata) if freed else storage_key(t)
            if key is None:
                continue
            records = registry.on_storage(key)
            if not records:
                continue
            start, end = (0, _storage_nbytes(t)) if freed else byte_range(t)
            if write is None:
                # The walk above the writing frame is reused across writes (`capture_save`):
                # a loop writing every step writes from the same lines.
                stack, entry = sites.capture_save(3, records[0].owner.max_stack)
            else:
                stack, entry = write.stack, write.entry
            write = WriteRecord(op, stack, entry, None, start, end, whole)
            write.storage = freed
            _note_node(write)
            intercept.state.busy = True  # our own bookkeeping writes nothing to intercept
            try:
                for rec in records:
                    # A metadata write (`.data =`, `set_`) swaps what `t` points at; only a
                    # record holding `t` itself sees it. Saved views keep the old bytes.
                    if freed:
                        hit = True
                    elif whole:
                        hit = rec.tensor is t
                        if hit:
                            rec.span = None  # its shape, strides or storage change
                    else:
                        hit = overlaps(rec.tensor, start, end, t, saved_span(rec))
                    writes = rec.writes
                    if writes is None:
                        rec.writes = [(write, hit)]
                    else:
                        writes.append((write, hit))
                touched.extend(records)
                for watcher, recs in _by_watcher(records):
                    told.append((watcher, watcher.before_writes(write, recs)))
            finally:
                intercept.state.busy = False
        return (touched, told) if touched else None

    def after_write(self, token: Any) -> None:
        """The write happened."""
        for watcher, inner in token[1]:
            try:
                watcher.after_writes(inner)
            except Exception as exc:  # noqa: BLE001 - see before_write
                self.internal_error("after a write", exc)

    def internal_error(self, what: str, exc: BaseException) -> None:
        """Tell the innermost session (a coverage gap); never raise."""
        session = self.innermost() or (self.sessions[-1] if self.sessions else None)
        if session is not None:
            try:
                session.on_internal_error(what, exc)
            except Exception:  # noqa: BLE001, S110 - nothing more we can do
                pass

    def write_failed(self, token: Any, op: str, exc: Optional[BaseException], args: tuple) -> None:
        """The write did not happen (it raised): forget it, and explain PyTorch's error."""
        if token:
            touched, told = token
            for rec in touched:
                if rec.writes:
                    rec.writes.pop()
            for watcher, inner in told:
                watcher.writes_failed(inner)
        if exc is None:
            return
        try:
            message = str(exc)
            for needle, kind in WRITE_ERRORS:
                if needle in message:
                    session = self.innermost()
                    if session is not None:
                        session.on_write_error(kind, op, exc, args)
                    return
        except Exception as err:  # noqa: BLE001 - PyTorch's own error goes on, unexplained
            self.internal_error("the explanation of PyTorch's error at a write", err)


class Watch:
    """One watched tensor (`Runtime.watch`)."""

    __slots__ = ("tensor", "key", "watcher", "payload")

    def __init__(self, tensor: torch.Tensor, key: int, watcher: Session, payload: Any) -> None:
        self.tensor = tensor
        self.key = key
        self.watcher = watcher
        self.payload = payload


def _remove_last(items: list, item: Any) -> None:
    for i in range(len(items) - 1, -1, -1):
        if items[i] is item:
            del items[i]
            return


runtime = Runtime()


# -- autograd.Function.apply and saved_tensors_hooks.__enter__ ---------------------------
def _patch_entry_points(patches: patching.Patches) -> None:
    from torch.autograd import function as autograd_function
    from torch.autograd import graph

    is_compiling = intercept._is_compiling

    def on_apply(call: Any, cls: Any, args: tuple, kwargs: dict) -> Any:
        out = call(*args, **kwargs)
        if not is_compiling():
            session = runtime.innermost()
            if session is not None and torch.is_grad_enabled():
                session.on_function_applied(cls, out)
        return out

    def on_hooks_enter(call: Any, hooks: Any, args: tuple, kwargs: dict) -> Any:
        session = runtime.innermost()
        if session is not None and not isinstance(hooks, GradguardHooks):
            frame = sites.innermost_user_frame(3)
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "<unknown>"
            session.on_foreign_hooks(hooks, where)
        return call(*args, **kwargs)

    def on_hooks_exit(call: Any, hooks: Any, args: tuple, kwargs: dict) -> Any:
        out = call(*args, **kwargs)
        if not isinstance(hooks, GradguardHooks):
            session = runtime.innermost()
            if session is not None:
                session.on_foreign_hooks_exit(hooks)
        return out

    for owner, name, hook in (
        (autograd_function.Function, "apply", on_apply),
        (graph.saved_tensors_hooks, "__enter__", on_hooks_enter),
        (graph.saved_tensors_hooks, "__exit__", on_hooks_exit),
    ):
        patches.replace(owner, name, patching.around(owner, name, hook))
    patches.replace(graph, "disable_saved_tensors_hooks",
                    _stepping_aside(graph.disable_saved_tensors_hooks))

    def on_register_hooks(call: Any, saved: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return call(*args, **kwargs)
        except RuntimeError as exc:
            session = runtime.innermost()
            if session is not None and "already been set" in str(exc):
                frame = sites.innermost_user_frame(2)
                where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "<unknown>"
                session.on_foreign_hooks(saved, where)
                _add_note(exc, "gradguard: inside gradguard.detect()/protect() every saved tensor "
                             "carries gradguard's hooks, and PyTorch allows one pair per saved "
                             "tensor; register these hooks outside the gradguard session")
            raise

    saved_tensor = torch._C._autograd.SavedTensor
    patches.replace(saved_tensor, "register_hooks",
                    patching.around(saved_tensor, "register_hooks", on_register_hooks))


def _by_watcher(records: list[SavedRecord]) -> list[tuple[Session, list[SavedRecord]]]:
    """The records' watchers, each with its records, in first-seen order (records without
    one left out). One record, the common case, is answered without grouping."""
    if len(records) == 1:
        watcher = records[0].watcher
        return [] if watcher is None else [(watcher, records)]
    groups: dict[int, tuple[Session, list[SavedRecord]]] = {}
    for rec in records:
        watcher = rec.watcher
        if watcher is not None:
            group = groups.get(id(watcher))
            if group is None:
                groups[id(watcher)] = (watcher, [rec])
            else:
                group[1].append(rec)
    return list(groups.values())


def _note_node(write: WriteRecord) -> None:
    """Which backward made ``write`` (`WriteRecord.node`), if one is running, and the
    sessions' label for the code running (`WriteRecord.during`)."""
    write.during = intercept.state.during
    node = torch._C._current_autograd_node()
    if node is not None:
        write.node = type(node).__name__


def _storage_nbytes(storage: Any) -> int:
    return int(storage.nbytes())


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)


def _stepping_aside(disable: Any) -> Any:
    """``disable_saved_tensors_hooks`` (which torch.func's transforms enter too) refuses
    any saved-tensor hooks: for its extent gradguard takes its own off this thread's
    stack, tells the session (a coverage gap naming the line), and puts them back after."""

    @contextlib.contextmanager
    def disable_saved_tensors_hooks(error_message: str) -> Iterator[None]:
        ours = _pop_our_hooks()
        if ours:
            session = runtime.innermost()
            if session is not None:
                frame = sites.innermost_user_frame(3)
                where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "<unknown>"
                session.on_step_aside(error_message, where)
        try:
            with disable(error_message):
                yield
        finally:
            for pack, unpack in reversed(ours):
                torch._C._autograd._push_saved_tensors_default_hooks(pack, unpack)

    functools.update_wrapper(disable_saved_tensors_hooks, disable)
    return disable_saved_tensors_hooks


def _pop_our_hooks() -> list[tuple[Any, Any]]:
    """Pop gradguard's saved-tensor hooks off the top of this thread's stack."""
    popped = []
    autograd = torch._C._autograd
    top = autograd._top_saved_tensors_default_hooks(False)
    while top is not None and getattr(getattr(top[0], "__self__", None), "_gradguard_session", False):
        autograd._pop_saved_tensors_default_hooks()
        popped.append(top)
        top = autograd._top_saved_tensors_default_hooks(False)
    return popped


def unpatch_all() -> None:
    """Restore every attribute gradguard patched (no session may be active)."""
    with runtime._lock:
        if runtime.sessions:
            raise RuntimeError("gradguard sessions are still active")
        intercept.uninstall()
        runtime._patches.restore()


def new_record(t: torch.Tensor, owner: Session, watcher: Optional[Session], kind: str,
               label: Optional[str], skip: int,
               stack: Optional[sites.RawStack] = None) -> SavedRecord:
    """Register ``t`` as saved outside the pack hook: ctx attributes, what a checkpointed
    region reads. ``stack``: its save site, when known (else captured here)."""
    if stack is None:
        stack, _ = sites.capture(skip=skip)
    rec = SavedRecord(t if t.is_leaf else t.detach(), t._version, None, owner, stack,
                      kind, label)
    rec.producer = type(t.grad_fn) if t.grad_fn is not None else None
    rec.watcher = watcher
    runtime.registry.add(rec)
    return rec
