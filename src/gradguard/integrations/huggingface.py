"""A Hugging Face ``transformers.TrainerCallback``: ``Trainer.train()`` runs inside a
gradguard session, and the report comes at its end.

    from gradguard.integrations.huggingface import GradguardCallback

    trainer = transformers.Trainer(model, args, train_dataset=data,
                                   callbacks=[GradguardCallback()])   # or mode="protect"
    trainer.train()

The session is entered in ``on_train_begin`` and left in ``on_train_end``, then the text
report goes to stderr (and ``json=PATH`` writes the JSON); ``callback.session`` keeps
it. The Trainer has no hook for a failed run, so the callback, when the Trainer is built
with it, wraps that Trainer's ``train`` so that a run that raises leaves the session too
(a callback added later with ``trainer.add_callback`` is left at the next
``on_train_begin`` or at interpreter exit instead). Importing this module does not import
transformers: the class is built on first access.
"""
from __future__ import annotations

import atexit
import functools
import sys
from types import FrameType
from typing import Any, Optional

from gradguard.integrations._adapter import lazy_class

__all__ = ["GradguardCallback"]  # noqa: F822 - built on first access (__getattr__)


def _build() -> type:
    try:
        from transformers import Trainer, TrainerCallback
    except ImportError:
        raise ImportError("GradguardCallback needs transformers: pip install "
                          "transformers") from None
    from gradguard.integrations._adapter import SessionAdapter

    def calling_trainer() -> Any:
        """The Trainer whose __init__ is running the callback hook (a few frames up)."""
        frame: Optional[FrameType] = sys._getframe(2)
        for _ in range(8):
            if frame is None:
                return None
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer):
                return candidate
            frame = frame.f_back
        return None

    class GradguardCallback(TrainerCallback, SessionAdapter):
        """Run ``Trainer.train()`` under `gradguard.detect()` (or `gradguard.protect()`
        with ``mode="protect"``); report at the end. Arguments: see `SessionAdapter`."""

        def __init__(self, mode: str = "detect", on_conflict: str = "record",
                     json: Any = None, checksum: bool = False, stream: Any = None) -> None:
            SessionAdapter.__init__(self, mode=mode, on_conflict=on_conflict, json=json,
                                    checksum=checksum, stream=stream)
            atexit.register(self.finish_session)

        def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            trainer = calling_trainer()
            if trainer is None or getattr(trainer.train, "_gradguard", None) is self:
                return
            train = trainer.train

            @functools.wraps(train)
            def guarded_train(*a: Any, **kw: Any) -> Any:
                try:
                    return train(*a, **kw)
                except BaseException as exc:
                    self.finish_session(exc)
                    raise

            guarded_train._gradguard = self  # type: ignore[attr-defined]
            trainer.train = guarded_train

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start_session()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.finish_session()

    GradguardCallback.__module__ = __name__
    return GradguardCallback


__getattr__ = lazy_class(globals(), "GradguardCallback", _build)
