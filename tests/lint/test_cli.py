"""The lint/fix/rule commands through ``gradguard._cli.main.main`` and ``python -m gradguard``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gradguard._cli.main import main

BUGGY = """import torch


def f(x):
    y = torch.sigmoid(x)
    y.mul_(2)
    return y
"""
CLEAN = """import torch


def f(x):
    return torch.sigmoid(x) * 2
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "model.py").write_text(BUGGY)
    (tmp_path / "pkg" / "clean.py").write_text(CLEAN)
    for skipped in (".venv", "build", "node_modules", "pkg/__pycache__"):
        (tmp_path / skipped).mkdir(parents=True)
        (tmp_path / skipped / "vendored.py").write_text(BUGGY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_findings_exit_1_with_one_line_each(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lint"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("pkg/model.py:6:5: GG101 [*] `y.mul_()` overwrites the output of `torch.sigmoid` (line 5), "
                      "which autograd saved for backward; use `y = y.mul(...)`")
    assert out[-1] == "Found 1 problem (1 fixable with `gradguard fix`)."
    assert len(out) == 2  # .venv, build, node_modules, __pycache__ are skipped


def test_clean_exit_0(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lint", "pkg/clean.py"]) == 0
    assert capsys.readouterr().out.strip() == "All checks passed!"


def test_noqa_suppresses(project: Path, capsys: pytest.CaptureFixture) -> None:
    (project / "pkg" / "model.py").write_text(BUGGY.replace("y.mul_(2)", "y.mul_(2)  # noqa: GG101"))
    assert main(["lint", "pkg"]) == 0
    (project / "pkg" / "model.py").write_text(BUGGY.replace("y.mul_(2)", "y.mul_(2)  # noqa: GG102"))
    assert main(["lint", "pkg"]) == 1
    (project / "pkg" / "model.py").write_text(BUGGY.replace("y.mul_(2)", "y.mul_(2)  # noqa"))
    assert main(["lint", "pkg"]) == 0


def test_select_and_ignore_prefixes(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lint", "--ignore", "GG1"]) == 0
    assert main(["lint", "--select", "GG2"]) == 0
    assert main(["lint", "--select", "GG101"]) == 1
    assert main(["lint", "--select", "ALL", "--ignore", "GG101"]) == 0


def test_unknown_selector_is_usage_error(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lint", "--select", "GG999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown rule selector 'GG999'" in err


def test_missing_path_is_usage_error(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lint", "nope.py"]) == 2
    assert capsys.readouterr().err == "gradguard: error: no such file or directory: nope.py\n"


def test_syntax_error_is_a_diagnostic(project: Path, capsys: pytest.CaptureFixture) -> None:
    (project / "pkg" / "broken.py").write_text("import torch\ndef f(:\n")
    assert main(["lint", "pkg/broken.py"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("pkg/broken.py:2:7: E999 SyntaxError: ")
    assert "Traceback" not in out


def test_undecodable_file_is_a_diagnostic(project: Path, capsys: pytest.CaptureFixture) -> None:
    (project / "pkg" / "latin.py").write_bytes(b"x = '\xff'\n")
    assert main(["lint", "pkg/latin.py"]) == 1
    assert "E902 cannot read file" in capsys.readouterr().out


def test_pyproject_config(project: Path, capsys: pytest.CaptureFixture) -> None:
    (project / "pyproject.toml").write_text('[tool.gradguard]\nexclude = ["pkg/model.py"]\n')
    assert main(["lint"]) == 0
    (project / "pyproject.toml").write_text('[tool.gradguard]\nignore = ["GG101"]\nextend-select = ["GG4"]\n')
    assert main(["lint"]) == 0
    (project / "pyproject.toml").write_text('[tool.gradguard]\nselect = ["GG2"]\n')
    assert main(["lint"]) == 0
    assert main(["lint", "--select", "GG1"]) == 1  # the command line wins
    (project / "pyproject.toml").write_text('[tool.gradguard]\nbogus = 1\n')
    assert main(["lint"]) == 2
    assert "unknown [tool.gradguard] key 'bogus'" in capsys.readouterr().err


def test_gitignore_is_respected(project: Path) -> None:
    (project / ".gitignore").write_text("generated/\n")
    (project / "generated").mkdir()
    (project / "generated" / "g.py").write_text(BUGGY)
    (project / "pkg" / "model.py").write_text(CLEAN)
    assert main(["lint"]) == 0


def test_json_format(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lint", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(d["code"], d["filename"], d["location"]) for d in data] == [
        ("GG101", "pkg/model.py", {"row": 6, "column": 5})]
    assert data[0]["fix"]["applicability"] == "safe"


def test_sarif_format(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lint", "--format", "sarif"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["version"] == "2.1.0" and "sarif-2.1.0" in sarif["$schema"]
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    (result,) = run["results"]
    assert rules[result["ruleIndex"]]["id"] == result["ruleId"] == "GG101"
    region = result["locations"][0]["physicalLocation"]["region"]
    assert (region["startLine"], region["startColumn"]) == (6, 5)
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "pkg/model.py"
    assert all(r["shortDescription"]["text"] for r in rules)


def test_fix_diff_changes_nothing(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["fix", "--diff", "pkg"]) == 1
    out = capsys.readouterr().out
    assert "-    y.mul_(2)\n+    y = y.mul(2)\n" in out
    assert (project / "pkg" / "model.py").read_text() == BUGGY


def test_fix_then_lint_clean(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["fix", "pkg"]) == 0
    assert "y = y.mul(2)" in (project / "pkg" / "model.py").read_text()
    assert main(["lint", "pkg"]) == 0
    assert main(["fix", "--diff", "pkg"]) == 0  # idempotent: nothing left to change


def test_lint_fix_flag(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lint", "--fix", "pkg"]) == 0
    assert "y = y.mul(2)" in (project / "pkg" / "model.py").read_text()


def test_unsafe_fix_needs_flag(project: Path, capsys: pytest.CaptureFixture) -> None:
    src = "import torch\n\n\ndef f(x: torch.Tensor, w: torch.Tensor):\n    h = x @ w\n    x += 1\n    return h\n"
    (project / "pkg" / "model.py").write_text(src)
    main(["fix", "pkg"])
    assert (project / "pkg" / "model.py").read_text() == src
    assert "1 unsafe fix not applied" in capsys.readouterr().out
    assert main(["fix", "--unsafe-fixes", "pkg"]) == 0
    assert "    x = x + 1\n" in (project / "pkg" / "model.py").read_text()


def test_rule_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["rule", "GG101"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# GG101 inplace-on-saved-output") and "## Why is this bad?" in out
    assert main(["rule", "GG999"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradguard: error: unknown rule 'GG999'") and err.count("\n") == 1
    assert main(["rule", "--list"]) == 0
    assert "GG401" in capsys.readouterr().out


def test_module_entry_point(project: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gradguard", "lint", "pkg"], capture_output=True, text=True)
    assert proc.returncode == 1 and "GG101" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "gradguard", "lint", "missing"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "gradguard: error: no such file or directory: missing"
