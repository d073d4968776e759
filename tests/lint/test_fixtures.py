"""Per-rule fixtures: ``fixtures/GGxxx/*.py`` with the expected diagnostics in the
matching ``.txt`` (``line:col CODE message``), and ``*.in.py`` -> ``*.out.py`` fix
cases (file names containing ``unsafe`` run with unsafe fixes)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gradguard.lint.base import all_rules
from gradguard.lint.engine import lint_source
from gradguard.lint.fixer import fix_source

ROOT = Path(__file__).parent / "fixtures"
CASES = sorted(p for p in ROOT.glob("GG*/*.py") if not p.name.endswith((".in.py", ".out.py")))
FIXES = sorted(ROOT.glob("GG*/*.in.py"))


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_diagnostics_match_expected(case: Path) -> None:
    code = case.parent.name
    got = [f"{d.line}:{d.col} {d.code} {d.message}" for d in lint_source(case.read_text(), case.name, [code])]
    expected = case.with_suffix(".txt").read_text().splitlines()
    assert got == expected


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_marked_lines_are_exactly_the_findings(case: Path) -> None:
    # Every line carrying a `# GGxxx` comment must be reported, and nothing else:
    # the negative half of each fixture guards precision.
    code = case.parent.name
    src = case.read_text()
    marked = {i for i, line in enumerate(src.splitlines(), 1) if re.search(rf"\S.*#\s*{code}\b", line)}
    assert marked, "fixture has no marked positive case"
    assert {d.line for d in lint_source(src, case.name, [code])} == marked


@pytest.mark.parametrize("case", FIXES, ids=_id)
def test_fix_matches_expected_and_is_idempotent(case: Path) -> None:
    code = case.parent.name
    unsafe = "unsafe" in case.name
    result = fix_source(case.read_text(), case.name, [code], unsafe=unsafe)
    expected = case.with_name(case.name.replace(".in.py", ".out.py")).read_text()
    assert result.source == expected
    assert result.fixed and not result.failed
    ast.parse(result.source)
    again = fix_source(result.source, case.name, [code], unsafe=unsafe)
    assert again.source == result.source and not again.fixed


def test_every_rule_has_fixtures() -> None:
    for code, rule in all_rules().items():
        cases = list((ROOT / code).glob("*.txt"))
        assert cases, f"{code} has no fixture"
        if rule.fix_safety in ("safe", "sometimes", "unsafe") and code not in ("GG401",):
            assert list((ROOT / code).glob("*.in.py")), f"{code} has a fix but no fix fixture"
