"""Docs that must follow the code: the rule table in docs/lint.md, the generated
docs/rules/<CODE>.md pages, SARIF's helpUri, and the pre-commit hook definition."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from gradguard._cli.rule import table
from gradguard.lint import all_rules, lint_source
from gradguard.lint.docs import rule_page
from gradguard.lint.output import to_sarif

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "lint.md"


def test_rule_table_in_docs_is_current() -> None:
    assert table() in DOC.read_text(), "regenerate the rule table in docs/lint.md (see the comment above it)"


def test_rule_page_comes_from_the_rule_doc() -> None:
    for code, r in all_rules().items():
        page = rule_page(r)
        assert page.startswith(f"# {code} {r.name}\n")
        for section in ("## What it does", "## Why is this bad?", "## Example", "## Fix safety"):
            assert section in page
        assert f"Fix is {'not' if r.fix_availability == 'never' else r.fix_availability}" in page


def test_sarif_help_uri_points_at_the_rule_page() -> None:
    diags = lint_source("import torch\ny = torch.sigmoid(x)\ny.mul_(2)\n", "a.py")
    rules = json.loads(to_sarif(diags))["runs"][0]["tool"]["driver"]["rules"]
    by_id = {r["id"]: r for r in rules}
    assert by_id["GG101"]["helpUri"] == "docs/rules/GG101.md"
    for code in all_rules():
        assert (ROOT / by_id[code]["helpUri"]).is_file()


def test_pre_commit_hook_definition() -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert isinstance(hooks, list)
    hook = next(h for h in hooks if h.get("id") == "gradguard-lint")
    assert hook["entry"] == "gradguard lint"
    # `system`: the hook runs the installed gradguard; `python` would pip-install torch.
    assert hook["language"] == "system"
    assert hook["types"] == ["python"]
