"""Lint one source text or many files: parse, analyse, run the selected rules,
apply ``# noqa`` suppressions."""
from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from gradguard.errors import UsageError
from gradguard.lint.analysis import analyze, frameworks_in
from gradguard.lint.base import Diagnostic, FileContext, Rule, all_rules

SYNTAX_ERROR = "E999"
READ_ERROR = "E902"

_NOQA_RE = re.compile(r"#\s*noqa(?P<colon>\s*:\s*(?P<codes>[A-Za-z]+[0-9]+(?:[\s,]+[A-Za-z]+[0-9]+)*))?",
                      re.IGNORECASE)
_FILE_NOQA_RE = re.compile(r"^#\s*gradguard\s*:\s*noqa\s*$", re.IGNORECASE | re.MULTILINE)


def resolve_selection(select: Optional[Sequence[str]] = None, ignore: Sequence[str] = (),
                      extend_select: Sequence[str] = ()) -> list[str]:
    """Rule codes enabled by ``select``/``ignore`` prefixes (``ALL`` selects everything).

    Without ``select`` the default set is every rule with ``default = True``
    (GG1xx and GG2xx); GG4xx rules run only when selected.
    """
    rules = all_rules()
    for prefix in list(select or ()) + list(ignore) + list(extend_select):
        if prefix.upper() != "ALL" and not any(code.startswith(prefix.upper()) for code in rules):
            raise UsageError(f"unknown rule selector {prefix!r} (see `gradguard rule --list`)")

    def matches(code: str, prefixes: Iterable[str]) -> bool:
        return any(p.upper() == "ALL" or code.startswith(p.upper()) for p in prefixes)

    if select:
        chosen = {c for c in rules if matches(c, select)}
    else:
        chosen = {c for c, r in rules.items() if r.default}
    chosen |= {c for c in rules if matches(c, extend_select)}
    chosen -= {c for c in rules if matches(c, ignore)}
    return sorted(chosen)


def decode_source(data: bytes) -> str:
    """Decode Python source bytes honouring a PEP 263 coding cookie and a BOM."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError:
        encoding = "utf-8"
    text = data.decode(encoding)
    return text[1:] if text.startswith("\ufeff") else text


def _noqa_filter(diags: list, lines: list) -> list:
    kept = []
    for d in diags:
        text = lines[d.line - 1] if 0 < d.line <= len(lines) else ""
        m = _NOQA_RE.search(text) if "#" in text else None
        if m is None:
            kept.append(d)
            continue
        if m.group("codes") is None:
            continue  # a bare noqa comment (no codes) silences the line
        codes = {c.upper() for c in re.split(r"[\s,]+", m.group("codes")) if c}
        if not any(d.code == c or d.code.startswith(c) for c in codes):
            kept.append(d)
    return kept


def lint_source(source: str, path: str = "<string>", select: Optional[Sequence[str]] = None) -> list[Diagnostic]:
    """Diagnostics for one file's text.  ``select`` is a list of rule codes
    (default: the rules enabled by default).  Syntax errors come back as one
    ``E999`` diagnostic, never as an exception."""
    codes = resolve_selection() if select is None else list(select)
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        msg = (exc.msg or "invalid syntax").split("\n")[0]
        return [Diagnostic(path, exc.lineno or 1, max(exc.offset or 1, 1), SYNTAX_ERROR, f"SyntaxError: {msg}",
                           "syntax-error")]
    except (ValueError, RecursionError, MemoryError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [Diagnostic(path, 1, 1, SYNTAX_ERROR, f"SyntaxError: {detail}", "syntax-error")]
    if not frameworks_in(source) or _FILE_NOQA_RE.search(source):
        return []
    facts = analyze(tree, source)
    lines = source.splitlines()
    ctx = FileContext(path, source, tree, facts, lines)
    rules = all_rules()
    diags: list[Diagnostic] = []
    for code in codes:
        rule_cls = rules.get(code)
        if rule_cls is None or not (rule_cls.frameworks & facts.frameworks):
            continue
        diags.extend(rule_cls().check(ctx))
    seen = set()
    unique = []
    for d in sorted(diags, key=Diagnostic.sort_key):
        key = (d.line, d.col, d.code)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return _noqa_filter(unique, lines)


@dataclass
class FileResult:
    path: str
    diagnostics: list = field(default_factory=list)
    crash: Optional[str] = None  # an internal error: a bug in gradguard, reported in one line
    source: Optional[str] = None


def lint_file(path: Path, select: Sequence[str], display: Optional[str] = None,
              keep_source: bool = False) -> FileResult:
    """Lint one file; I/O and decoding problems become an ``E902`` diagnostic."""
    shown = display or str(path)
    try:
        data = path.read_bytes()
        source = decode_source(data)
    except (OSError, UnicodeDecodeError, LookupError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return FileResult(shown, [Diagnostic(shown, 1, 1, READ_ERROR, f"cannot read file: {reason}", "io-error")])
    try:
        diags = lint_source(source, shown, select)
    except Exception as exc:  # a bug in a rule must not take down the whole run
        return FileResult(shown, [], f"{type(exc).__name__}: {exc}", source if keep_source else None)
    return FileResult(shown, diags, None, source if keep_source else None)


__all__ = ["lint_source", "lint_file", "resolve_selection", "decode_source", "FileResult", "Rule",
           "SYNTAX_ERROR", "READ_ERROR"]
