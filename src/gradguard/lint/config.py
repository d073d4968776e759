"""``[tool.gradguard]`` in ``pyproject.toml``: exclude, select, ignore, extend-select."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from gradguard.errors import UsageError

_KEYS = ("exclude", "extend-exclude", "select", "ignore", "extend-select")


@dataclass
class Config:
    root: Path
    path: Optional[Path] = None
    exclude: list = field(default_factory=list)
    select: Optional[list] = None
    ignore: list = field(default_factory=list)
    extend_select: list = field(default_factory=list)


def _load_toml(text: str, path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        try:
            # tomli: an optional backport, not installed where mypy runs
            import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
        except ModuleNotFoundError:
            return _mini_toml(text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None


def _mini_toml(text: str) -> dict:
    """Just enough TOML for ``[tool.gradguard]`` (string lists) when no TOML parser is installed."""
    m = re.search(r"^\[tool\.gradguard\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    table: dict[str, Any] = {}
    if m:
        for key, value in re.findall(r"^([\w-]+)\s*=\s*(\[.*?\]|\"[^\"]*\")", m.group(1), re.M | re.S):
            table[key] = re.findall(r"\"([^\"]*)\"|'([^']*)'", value)
            table[key] = [a or b for a, b in table[key]]
    return {"tool": {"gradguard": table}}


def _string_list(table: dict, key: str, path: Path) -> list:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{path}: [tool.gradguard] {key} must be a list of strings")
    return list(value)


def find_pyproject(start: Path) -> Optional[Path]:
    for d in [start, *start.parents]:
        candidate = d / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: Optional[str] = None, start: Optional[Path] = None) -> Config:
    """Read ``[tool.gradguard]`` from ``explicit`` or the nearest ``pyproject.toml`` above ``start``."""
    start = (start or Path.cwd()).resolve()
    path: Optional[Path]
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise UsageError(f"config file not found: {explicit}")
    else:
        path = find_pyproject(start)
    if path is None:
        return Config(root=start)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    table = _load_toml(text, path).get("tool", {}).get("gradguard", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.gradguard] must be a table")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise UsageError(f"{path}: unknown [tool.gradguard] key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    cfg = Config(root=path.parent.resolve(), path=path)
    cfg.exclude = _string_list(table, "exclude", path) + _string_list(table, "extend-exclude", path)
    cfg.select = _string_list(table, "select", path) if "select" in table else None
    cfg.ignore = _string_list(table, "ignore", path)
    cfg.extend_select = _string_list(table, "extend-select", path)
    return cfg
