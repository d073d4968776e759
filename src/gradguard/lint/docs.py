"""The Markdown page of each lint rule, generated from the rule class's own attributes:
what `gradguard rule GG101` prints and ``docs/rules/GG101.md`` holds (``tools/
gen_rule_docs.py`` writes every page, runtime codes' too; tests/cli/test_rule_docs.py
checks them)."""
from __future__ import annotations

import textwrap

from gradguard.lint.base import Rule

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
