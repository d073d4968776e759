"""`Session`: the core's whole view of a capability.

A capability (detect, protect, and what builds on them) is a `Session` subclass. The core
enters and exits it, installs its saved-tensor hooks, and calls the listener methods below
when something happens that it may care about; the defaults do nothing. The core never
imports a capability, and never calls anything not listed here.

Links between sessions are computed on every ``__enter__`` and cleared on the matching
``__exit__``, so a session object reused later -- alone, or inside another session -- never
carries a link from an earlier use.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar

import torch

from gradguard._core import sites
from gradguard._core.runtime import GradguardHooks, runtime

if TYPE_CHECKING:
    from gradguard._core.registry import SavedRecord, WriteRecord

F = TypeVar("F", bound=Callable[..., Any])


class Session:
    """Base class of every gradguard session; a context manager and a decorator."""

    max_stack: int = sites.MAX_STACK
    _gradguard_session = True  # how the runtime tells our hooks' owners from others
    # Whether the session installs saved-tensor hooks (`pack`/`unpack`). A session that
    # does not (it only watches writes, `Runtime.watch`) is transparent: it is never the
    # innermost session, so the listener methods below keep going to the saving session
    # it is nested in or wraps.
    saves: bool = True

    def __init__(self) -> None:
        self.parent: Optional[Session] = None  # the enclosing session while active
        self._depth = 0  # a session may be re-entered (a decorated recursive function)
        self._hooks: list[GradguardHooks] = []

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> Any:
        if self._depth == 0:
            outer = runtime.innermost()
            self.parent = outer if outer is not self else None
            self.on_enter()
        self._depth += 1
        runtime.acquire(self)
        if self.saves:
            hooks = GradguardHooks(self.pack, self.unpack)
            hooks.__enter__()
            self._hooks.append(hooks)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if isinstance(exc_info[1], Exception):
            try:
                self.on_exception(exc_info[1])
            except Exception as exc:  # noqa: BLE001 - the user's exception goes on as it was
                runtime.internal_error("an exception leaving the session", exc)
        if self.saves:
            self._hooks.pop().__exit__(*exc_info)
        runtime.release(self)
        self._depth -= 1
        if self._depth == 0:
            self.on_exit()
            self.parent = None

    @property
    def active(self) -> bool:
        return self._depth > 0

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        guarded.gradguard_session = self  # type: ignore[attr-defined]
        return guarded  # type: ignore[return-value]

    def enclosing(self) -> list["Session"]:
        """This session and the active sessions it is nested in, innermost first."""
        chain: list[Session] = []
        session: Optional[Session] = self
        while session is not None and session not in chain:
            chain.append(session)
            session = session.parent
        return chain

    # -- saved-tensor hooks (required) --------------------------------------------------
    def pack(self, tensor: torch.Tensor) -> Any:
        raise NotImplementedError

    def unpack(self, packed: Any) -> torch.Tensor:
        raise NotImplementedError

    # -- listener methods: what the runtime tells a session ------------------------------
    def on_enter(self) -> None:
        """First entry (not re-entry); ``self.parent`` is already set."""

    def on_exit(self) -> None:
        """Last exit; ``self.parent`` is still set."""

    def before_writes(self, write: "WriteRecord", records: Sequence["SavedRecord"]) -> Any:
        """An intercepted write is about to touch the storage of ``records``, the records
        this session watches (``record.watcher is self``), each with ``record.writes[-1]``
        being ``(write, overlaps)``. Returns a token for `after_writes`/`writes_failed`."""
        return None

    def after_writes(self, token: Any) -> None:
        """The write announced with ``token`` happened."""

    def writes_failed(self, token: Any) -> None:
        """The write announced with ``token`` raised: undo what ``before_writes`` did."""

    def before_watched_write(self, op: str, target: Any, whole: bool,
                             payloads: Sequence[Any]) -> None:
        """An intercepted write ``op`` is about to write ``target`` (a tensor, or an
        ``UntypedStorage`` being resized), overlapping the bytes this session watches
        with `Runtime.watch` under ``payloads`` (empty for a `Runtime.watch_all`). Called
        before the bytes change and before any saved-record bookkeeping; raising a
        `GradguardError` stops the write."""

    def kept_tensor(self, record: "SavedRecord") -> Optional[torch.Tensor]:
        """What backward should get for ``record`` instead of its live tensor, if this
        session kept one (copy-on-write), else None."""
        return None

    def on_write_error(self, kind: str, op: str, exc: BaseException, args: tuple) -> None:
        """PyTorch raised one of its own in-place errors at a write (kinds in
        `gradguard._core.runtime.WRITE_ERRORS`); the innermost session is told. ``args``:
        the call's positional arguments, after the ``out=`` tensors for an ``out=`` call."""

    def on_exception(self, exc: BaseException) -> None:
        """``exc`` is leaving the session's extent (its ``with`` block, its decorated
        function, the target of ``gradguard run``), raised where no write was intercepted.
        Never changes it, but may add a note."""

    def on_function_applied(self, cls: type, output: Any) -> None:
        """A custom ``autograd.Function`` subclass ``cls`` returned ``output`` (grad mode)."""

    def on_foreign_hooks(self, hooks: Any, where: str) -> None:
        """Saved-tensor hooks that are not gradguard's were entered at ``where``."""

    def on_foreign_hooks_exit(self, hooks: Any) -> None:
        """The saved-tensor hooks told of in `on_foreign_hooks` were exited."""

    def on_step_aside(self, reason: str, where: str) -> None:
        """gradguard's saved-tensor hooks were taken off for a region entered at ``where``
        that refuses hooks (``disable_saved_tensors_hooks(reason)``, torch.func)."""

    def on_internal_error(self, what: str, exc: BaseException) -> None:
        """gradguard's own bookkeeping for ``what`` failed with ``exc``; the user's program
        went on as without gradguard (a coverage gap, never a changed program)."""
