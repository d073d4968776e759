"""Report formats: text (one line per finding), JSON, SARIF 2.1.0."""
from __future__ import annotations

import json
from typing import Sequence

from gradguard.lint.base import Diagnostic, all_rules

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
DOCS_URL = "https://github.com/gradguard/gradguard/blob/main/docs/lint.md"
# One generated page per rule (tools/gen_rule_docs.py), relative to the repository root.
RULE_PAGES = "docs/rules"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gradguard")
    except Exception:  # not installed (running from a checkout)
        return "0.0.0"


def format_text(diags: Sequence[Diagnostic]) -> str:
    lines = []
    for d in diags:
        mark = "[*] " if d.fix is not None and d.fix.safe else ""
        lines.append(f"{d.path}:{d.line}:{d.col}: {d.code} {mark}{d.message}")
    return "\n".join(lines)


def summary_line(diags: Sequence[Diagnostic]) -> str:
    if not diags:
        return "All checks passed!"
    safe = sum(1 for d in diags if d.fix is not None and d.fix.safe)
    unsafe = sum(1 for d in diags if d.fix is not None and not d.fix.safe)
    n = len(diags)
    text = f"Found {n} problem{'s' if n != 1 else ''}"
    extra = []
    if safe:
        extra.append(f"{safe} fixable with `gradguard fix`")
    if unsafe:
        extra.append(f"{unsafe} more with `--unsafe-fixes`")
    return text + (f" ({'; '.join(extra)})." if extra else ".")


def to_json(diags: Sequence[Diagnostic]) -> str:
    out = []
    for d in diags:
        out.append({
            "code": d.code,
            "name": d.name,
            "message": d.message,
            "filename": d.path,
            "location": {"row": d.line, "column": d.col},
            "end_location": {"row": d.end_line or d.line, "column": d.end_col or d.col},
            "fix": None if d.fix is None else {
                "applicability": d.fix.applicability,
                "kind": d.fix.kind,
                "message": d.fix.title,
            },
        })
    return json.dumps(out, indent=2)


def to_sarif(diags: Sequence[Diagnostic]) -> str:
    rules = all_rules()
    used = sorted({d.code for d in diags} | set(rules))
    rule_index = {code: i for i, code in enumerate(used)}
    descriptors: list[dict[str, object]] = []  # SARIF reportingDescriptor objects
    for code in used:
        r = rules.get(code)
        if r is None:  # E999 / E902
            descriptors.append({"id": code, "name": "syntax-error" if code == "E999" else "io-error",
                                "shortDescription": {"text": "File could not be parsed" if code == "E999"
                                                     else "File could not be read"},
                                "defaultConfiguration": {"level": "error"}})
            continue
        descriptors.append({
            "id": code,
            "name": r.name,
            "shortDescription": {"text": r.summary},
            "fullDescription": {"text": r.doc.strip()},
            "help": {"text": r.summary, "markdown": r.doc.strip()},
            "helpUri": f"{RULE_PAGES}/{code}.md",
            "defaultConfiguration": {"level": _level(code), "enabled": bool(r.default)},
            "properties": {"fixSafety": r.fix_safety, "fixAvailability": r.fix_availability},
        })
    results = []
    for d in diags:
        results.append({
            "ruleId": d.code,
            "ruleIndex": rule_index[d.code],
            "level": _level(d.code),
            "message": {"text": d.message},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": {"uri": d.path.replace("\\", "/")},
                    "region": {
                        "startLine": d.line, "startColumn": d.col,
                        "endLine": d.end_line or d.line, "endColumn": d.end_col or d.col,
                    },
                },
            }],
        })
    doc = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "gradguard", "version": _version(), "informationUri": DOCS_URL,
                                "rules": descriptors}},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }
    return json.dumps(doc, indent=2)


def _level(code: str) -> str:
    if code.startswith(("GG1", "E")):
        return "error"
    if code.startswith("GG2"):
        return "warning"
    return "note"
