"""The JSON report: its one writer and its one reader.

Schema version 1::

    {"version": 1,
     "conflicts": [{"kind", "code", "title",
                    "mutation": {"op", "via", "alias", "file", "line", "function",
                                 "stack": [{"file", "line", "function", "source",
                                            "library" (true only; library code)}]} | null,
                    "saved": {"op", "node", "file", "line", "function", "stack",
                              "assigned" (ctx attributes: the `ctx.x = ...` frame)} | null,
                    "tensor": {"dtype", "shape", "device", "version_saved", "version_now",
                               "name", "produced_by", "is_parameter"} | null,
                    "overlap", "aliasing", "fix", "detail", "repaired",
                    "writes": [{"op", "note", "file", "line", "function", "stack"}],
                    "origin": [{"what", "site": frame | null}] (leaf kinds, when found)}],
     "coverage_gaps": [str],
     "summary": {"conflicts": int, "by_kind": {kind: int}},
     "protect": {"copied_bytes", "copies", "copy_sites": [...]},   (gradguard.protect only)
     "run": {"target", "file", "args", "exit_code", "rank", "world_size"},  (gradguard run)
     "children": [{"pid", "rank", "world_size", "argv", "exit_code", "report"}]}
                                     (gradguard run, when child processes were checked)

Every producer of a report (``session.to_dict()``, ``gradguard run --json``) writes through
`report_to_dict`; every consumer (``gradguard fix --from-report``, rendering a saved
report later) reads through `read_report`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from gradguard._findings.model import Conflict, Frame
from gradguard.errors import UsageError

SCHEMA_VERSION = 1


# -- writer --------------------------------------------------------------------------------
def frame_to_dict(frame: Optional[Frame]) -> Optional[dict[str, Any]]:
    return None if frame is None else {"file": frame.file, "line": frame.line,
                                       "function": frame.function}


def report_to_dict(conflicts: Sequence[Conflict], gaps: Sequence[str] = (), *,
                   protect: Optional[dict[str, Any]] = None,
                   run: Optional[dict[str, Any]] = None,
                   children: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    by_kind: dict[str, int] = {}
    for c in conflicts:
        by_kind[c.kind] = by_kind.get(c.kind, 0) + 1
    data: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "conflicts": [c.to_dict() for c in conflicts],
        "coverage_gaps": list(gaps),
        "summary": {"conflicts": len(conflicts), "by_kind": by_kind},
    }
    if protect is not None:
        data["protect"] = protect
    if run is not None:
        data["run"] = run
    if children is not None:
        data["children"] = children
    return data


# -- reader --------------------------------------------------------------------------------
@dataclass
class Report:
    """A report read back: the conflicts as `Conflict` objects, and the other blocks."""

    conflicts: list[Conflict]
    coverage_gaps: list[str] = field(default_factory=list)
    protect: Optional[dict[str, Any]] = None
    run: Optional[dict[str, Any]] = None
    children: Optional[list[dict[str, Any]]] = None


def parse_report(data: Any, where: str = "report") -> Report:
    """A report from its decoded JSON; anything that is not one raises `UsageError`."""
    if not isinstance(data, dict) or not isinstance(data.get("conflicts"), list):
        raise UsageError(f"{where} has no \"conflicts\" list (is it a `gradguard run` "
                         "JSON report?)")
    if data.get("version") != SCHEMA_VERSION:
        raise UsageError(f"{where} has version {data.get('version')!r}; this gradguard reads "
                         f"version {SCHEMA_VERSION}")
    conflicts = []
    for i, entry in enumerate(data["conflicts"]):
        try:
            conflicts.append(Conflict.from_dict(entry))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"{where}: conflict #{i} is malformed ({exc!r})") from None
    return Report(conflicts, [str(g) for g in data.get("coverage_gaps") or ()],
                  data.get("protect"), data.get("run"), data.get("children"))


def read_report(path: str) -> Report:
    """Read a JSON report written by `gradguard run --json` (or ``session.to_dict()``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read report {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"report {path} is not valid JSON: {exc.msg} at line "
                         f"{exc.lineno}") from None
    return parse_report(data, f"report {path}")
