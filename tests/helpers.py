"""Test helpers: find the line of a marker comment in a test file."""
from __future__ import annotations

import inspect
from pathlib import Path


def line_of(marker: str, path: str | None = None) -> int:
    """Line number of the unique line ending with ``# <marker>`` in the caller's file."""
    if path is None:
        path = inspect.stack()[1].filename
    lines = Path(path).read_text().splitlines()
    hits = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, f"marker {marker!r} found {len(hits)} times in {path}"
    return hits[0]
