"""The Markdown page of each lint rule, generated from the rule class's own attributes
(``docs/rules/GG101.md`` ...; written by ``tools/gen_rule_docs.py``, checked by a test)."""
from __future__ import annotations

import textwrap

from gradguard.lint.base import Rule, all_rules

_AVAILABILITY = {"always": "Fix is always available.", "sometimes": "Fix is sometimes available.",
                 "never": "Fix is not available."}
_SAFETY = {"safe": "Fixes are safe.", "unsafe": "Fixes are unsafe (applied with `--unsafe-fixes`).",
           "sometimes": "Each fix is marked safe or unsafe at its site (see *Fix safety*).", "none": ""}


def rule_page(rule: type[Rule]) -> str:
    """The page for one rule: title, status line, then the rule's ``doc``."""
    status = "on by default" if rule.default else "off by default (enable with `--select` or `extend-select`)"
    head = [f"# {rule.code} {rule.name}", "", f"{rule.summary}.", "",
            f"Status: {status}. {_AVAILABILITY[rule.fix_availability]} {_SAFETY[rule.fix_safety]}".rstrip(), "",
            f"<!-- generated from gradguard.lint.rules ({rule.__module__}.{rule.__name__}) by "
            f"tools/gen_rule_docs.py; do not edit -->", "", ""]
    return "\n".join(head) + textwrap.dedent(rule.doc).strip() + "\n"


def index_page() -> str:
    rows = ["# Lint rules", "", "| Code | Name | Default | Fix | Summary |", "|---|---|---|---|---|"]
    for code, r in all_rules().items():
        rows.append(f"| [{code}]({code}.md) | {r.name} | {'on' if r.default else 'off'} | "
                    f"{r.fix_availability}/{r.fix_safety} | {r.summary} |")
    return "\n".join(rows) + "\n"


def pages() -> dict[str, str]:
    """File name (relative to ``docs/rules``) -> content, for every rule and the index."""
    out = {f"{code}.md": rule_page(r) for code, r in all_rules().items()}
    out["README.md"] = index_page()
    return out
