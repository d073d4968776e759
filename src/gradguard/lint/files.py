"""Find the Python files to lint, skipping excluded paths (gitignore-style patterns)."""
from __future__ import annotations

import difflib
import fnmatch
import io
import os
import sys
import tokenize
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from gradguard.errors import UsageError

DEFAULT_EXCLUDES = (".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox", "build", "dist", "__pycache__",
                    "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".eggs", "*.egg-info")


class Excluder:
    """gitignore-style matching relative to a root directory.

    ``name`` (no slash) matches that file or directory name anywhere; ``dir/`` only
    directories; ``a/b`` and ``/a`` are anchored at the root; ``*``, ``?`` and ``**``
    are globs.  Negations (``!pattern``) are not supported and are ignored.
    """

    def __init__(self, patterns: Iterable[str], root: Path) -> None:
        self.root = root
        self.names: list = []  # (pattern, dir_only)
        self.anchored: list = []
        for raw in patterns:
            p = raw.strip()
            if not p or p.startswith(("#", "!")):
                continue
            dir_only = p.endswith("/")
            p = p.rstrip("/")
            if "/" in p:
                self.anchored.append((p.lstrip("/").replace("**/", "*").replace("/**", "/*"), dir_only))
            else:
                self.names.append((p, dir_only))

    def excluded(self, path: Path, is_dir: bool) -> bool:
        name = path.name
        if any(fnmatch.fnmatchcase(name, p) for p, d in self.names if is_dir or not d):
            return True
        if self.anchored:
            try:
                rel = path.resolve().relative_to(self.root).as_posix()
            except ValueError:
                return False
            return any(fnmatch.fnmatchcase(rel, p) for p, d in self.anchored if is_dir or not d)
        return False


def read_gitignore(root: Path) -> list:
    try:
        return (root / ".gitignore").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def discover(paths: Sequence[str], excluder: Excluder) -> Iterator[Path]:
    """Python files under ``paths``, sorted per directory.  Files named explicitly are
    always linted; a path that does not exist is a usage error."""
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UsageError(f"no such file or directory: {raw}")
        if p.is_file():
            yield p
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if not excluder.excluded(d / n, True))
            for fn in sorted(filenames):
                if fn.endswith(".py") and not excluder.excluded(d / fn, False):
                    yield d / fn


def display_path(path: Path) -> str:
    """Relative to the working directory when below it, else as given."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def write_or_diff(path: Path, display: str, old: str, new: str, diff: bool, raw: bytes) -> None:
    """Print a unified diff, or write the new text keeping the file's encoding and newlines."""
    if diff:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                   f"a/{display}", f"b/{display}"))
        return
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    except SyntaxError:
        encoding = "utf-8"
    bom = raw.startswith(b"\xef\xbb\xbf")
    data = new.encode("utf-8" if encoding == "utf-8-sig" else encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
