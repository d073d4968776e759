"""What the framework adapters share: one session per run, entered and left on the
framework's hooks, and the report at the end (text on stderr, optional JSON)."""
from __future__ import annotations

import json as _json
import os
import sys
from typing import TYPE_CHECKING, Any, Optional, cast

if TYPE_CHECKING:  # the adapters import gradguard's sessions only when one starts
    from gradguard._detect.session import OnConflict

_MODES = ("detect", "protect")
_ON_CONFLICT = ("raise", "warn", "record")


class SessionAdapter:
    """``mode``: "detect" (report) or "protect" (also repair by copy-on-write).
    ``on_conflict``: as for `gradguard.detect` ("record" by default: report at the end).
    ``json``: also write the report as JSON to this path. ``stream``: where the text
    report goes (default stderr). ``session``: the last run's session, kept after it ends."""

    def __init__(self, mode: str = "detect", on_conflict: str = "record",
                 json: Optional[str] = None, checksum: bool = False,
                 stream: Any = None) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be 'detect' or 'protect', not {mode!r}")
        if on_conflict not in _ON_CONFLICT:
            raise ValueError(f"on_conflict must be 'raise', 'warn' or 'record', "
                             f"not {on_conflict!r}")
        if json is not None and not isinstance(json, (str, os.PathLike)):
            raise TypeError(f"json must be a file path, not {type(json).__name__}")
        if json is not None and not os.path.isdir(os.path.dirname(os.path.abspath(json))):
            # fail now, not after a long run
            raise ValueError(f"cannot write the JSON report to {os.fspath(json)!r}: "
                             "no such directory")
        self.mode, self.json = mode, json
        self.on_conflict = cast("OnConflict", on_conflict)  # checked above
        self.checksum = checksum
        self.stream = stream
        self.session: Any = None
        self._active = False

    def start_session(self) -> None:
        """Enter a new session (the previous one, if still active, is finished first)."""
        import gradguard

        self.finish_session()
        make = gradguard.protect if self.mode == "protect" else gradguard.detect
        self.session = make(on_conflict=self.on_conflict, checksum=self.checksum)
        self.session.__enter__()
        self._active = True

    def finish_session(self, exc: Optional[BaseException] = None) -> None:
        """Leave the session if it is active, then report. Safe to call twice."""
        if not self._active:
            return
        self._active = False
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else (None,) * 3
        self.session.__exit__(*exc_info)
        self.report()

    def report(self) -> None:
        session = self.session
        text = session.report() or "gradguard: no in-place conflicts found"
        stream = sys.stderr if self.stream is None else self.stream
        stream.write(text + "\n")
        stream.flush()
        if self.json is not None:
            with open(os.fspath(self.json), "w", encoding="utf-8") as f:
                _json.dump(session.to_dict(), f, indent=2)
                f.write("\n")


def lazy_class(namespace: dict[str, Any], name: str, build: Any) -> Any:
    """A module ``__getattr__`` that builds ``name`` (a class over a framework's base) on
    first access, so importing the module does not import the framework."""

    def __getattr__(attr: str) -> Any:
        if attr == name:
            namespace[name] = build()
            return namespace[name]
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {attr!r}")

    return __getattr__
