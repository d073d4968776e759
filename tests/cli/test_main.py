"""The top-level `gradguard` command: version, help, and bad usage as one line + exit 2."""
from __future__ import annotations

import subprocess
import sys

import gradguard
from gradguard._cli.main import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradguard", *args],
                          capture_output=True, text=True, timeout=120)


def test_python_dash_m_version():
    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"gradguard {gradguard.__version__}"


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "lint" in capsys.readouterr().err


def test_unknown_command_is_one_line_exit_2():
    proc = _run("explode")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_option_is_one_line_exit_2():
    proc = _run("lint", "--no-such-option")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unrecognized arguments" in proc.stderr


def test_gradguard_lints_its_own_repository_clean(capsys, monkeypatch):
    """Dogfood: the package, benchmarks and tools pass our own linter (the tests, the
    examples and the copy-on-write benchmark hold deliberate bugs: excluded in pyproject)."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(["lint", "."]) == 0, capsys.readouterr().out
