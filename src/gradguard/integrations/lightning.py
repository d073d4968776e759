"""A Lightning callback: every ``fit``/``validate``/``test``/``predict`` runs inside a
gradguard session, and the report comes at its end.

    from gradguard.integrations.lightning import GradguardCallback

    trainer = lightning.Trainer(callbacks=[GradguardCallback()])          # detect
    trainer = lightning.Trainer(callbacks=[GradguardCallback(mode="protect")])

The session is entered in ``setup`` and left in ``teardown`` -- or in ``on_exception``
when the run fails, so no session outlives it -- then the text report goes to stderr
(and ``json=PATH`` writes the JSON); ``callback.session`` keeps it. The class derives
from ``lightning.pytorch.Callback`` and/or ``pytorch_lightning.Callback`` (whichever are
installed), so it works with either package's Trainer. Importing this module does not
import Lightning: the class is built on first access.
"""
from __future__ import annotations

import importlib
from typing import Any

from gradguard.integrations._adapter import lazy_class

__all__ = ["GradguardCallback"]  # noqa: F822 - built on first access (__getattr__)


def _bases() -> tuple[type, ...]:
    bases = []
    for module in ("lightning.pytorch", "pytorch_lightning"):
        try:
            bases.append(importlib.import_module(module).Callback)
        except ImportError:
            continue
    if not bases:
        raise ImportError("GradguardCallback needs Lightning: pip install lightning "
                          "(or pytorch-lightning)")
    return tuple(bases)


def _build() -> type:
    from gradguard.integrations._adapter import SessionAdapter

    class GradguardCallback(*_bases(), SessionAdapter):  # type: ignore[misc]
        """Run the Trainer's work under `gradguard.detect()` (or `gradguard.protect()`
        with ``mode="protect"``); report at the end. Arguments: see `SessionAdapter`."""

        def __init__(self, mode: str = "detect", on_conflict: str = "record",
                     json: Any = None, checksum: bool = False, stream: Any = None) -> None:
            SessionAdapter.__init__(self, mode=mode, on_conflict=on_conflict, json=json,
                                    checksum=checksum, stream=stream)

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            self.start_session()

        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
            self.finish_session()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.finish_session(exception)

    GradguardCallback.__module__ = __name__
    return GradguardCallback


__getattr__ = lazy_class(globals(), "GradguardCallback", _build)
