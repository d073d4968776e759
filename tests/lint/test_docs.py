"""docs/lint.md lists every rule exactly as the registry describes it."""
from __future__ import annotations

from pathlib import Path

from gradguard._cli.rule import table

DOC = Path(__file__).resolve().parents[2] / "docs" / "lint.md"


def test_rule_table_in_docs_is_current() -> None:
    assert table() in DOC.read_text(), "regenerate the rule table in docs/lint.md (see the comment above it)"


def test_pre_commit_hook_definition() -> None:
    text = (DOC.parents[1] / ".pre-commit-hooks.yaml").read_text()
    for line in ("- id: gradguard-lint", "entry: gradguard lint", "language: python", "types: [python]"):
        assert line in text
