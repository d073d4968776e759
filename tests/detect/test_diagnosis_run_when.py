"""`gradguard run --when write`: detect's eager mode from the command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import line_of

from gradguard._cli.main import main
from gradguard._cli.run import parse_env

SCRIPT = '''\
import torch

x = torch.randn(4, requires_grad=True)
h = torch.sigmoid(x)  # SAVE
h.mul_(2)  # WRITE
print("after the write")
h.sum().backward()
'''


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "eager.py"
    path.write_text(SCRIPT)
    return path


def _lines(path: Path, marker: str) -> int:
    return line_of(marker, str(path))


def gg(*argv: str) -> int:
    try:
        return main(["run", *argv])
    except SystemExit as exc:
        return exc.code


def test_when_write_stops_at_the_write(tmp_path, capsys):
    script = _script(tmp_path)
    assert gg("--when", "write", "--on-conflict", "raise", str(script)) == 1
    out, err = capsys.readouterr()
    assert "after the write" not in out  # stopped before the write ran
    write = _lines(script, "WRITE")
    assert ("this write would overwrite f32[4] cpu v0, saved for backward by sigmoid; "
            "stopped before the write (when='write')") in err
    assert f"    #0 {script}:{write} in <module>\n         h.mul_(2)  # WRITE\n" in err
    assert "FIX write `h = h.mul(2)` instead of `h.mul_(2)`" in err
    assert (f"SUMMARY: gradguard: saved-tensor-mutated {script}:{write} in <module> "
            "(Tensor.mul_)") in err


def test_when_backward_is_the_default(tmp_path, capsys):
    script = _script(tmp_path)
    assert gg("--on-conflict", "raise", str(script)) == 1
    out, err = capsys.readouterr()
    assert "after the write" in out  # reported at backward, after the write
    assert "stopped before the write" not in err


def test_when_from_the_environment(tmp_path, capsys, monkeypatch):
    assert parse_env("when=write") == {"when": "write"}
    script = _script(tmp_path)
    monkeypatch.setenv("GRADGUARD_OPTIONS", "when=write:on_conflict=raise")
    assert gg(str(script)) == 1
    out, err = capsys.readouterr()
    assert "after the write" not in out
    assert "stopped before the write (when='write')" in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_when_write_with_protect_is_a_usage_error(tmp_path, how):
    script = _script(tmp_path)
    argv = ["--when", "write", "--mode", "protect"] if how == "flag" else []
    env = {**os.environ, "GRADGUARD_OPTIONS": "when=write:mode=protect" if how == "env" else ""}
    proc = subprocess.run([sys.executable, "-m", "gradguard", "run", *argv, str(script)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == ("gradguard: error: --when write does not go with --mode protect: "
                           "protect repairs the write instead of stopping at it\n")


def test_bad_when_value(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gradguard", "run", "--when", "later",
                           str(_script(tmp_path))], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "argument --when: expected one of backward, write, not 'later'" in proc.stderr


PARENT = '''\
import subprocess, sys
subprocess.run([sys.executable, "eager.py"], check=False)
print("parent done")
'''


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "env"])
def test_when_write_reaches_child_processes(tmp_path, how):
    from integrations.childenv import environ

    script = _script(tmp_path)
    (tmp_path / "parent.py").write_text(PARENT)
    argv = ["--when", "write"] if how == "flag" else []
    env = environ(**({"GRADGUARD_OPTIONS": "when=write"} if how == "env" else {}))
    proc = subprocess.run([sys.executable, "-m", "gradguard", "run", *argv, "parent.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    write = _lines(script, "WRITE")
    err = proc.stderr
    # the child's session stopped at the write (record mode: it goes on, then reports)
    assert ("this write would overwrite f32[4] cpu v0, saved for backward by sigmoid; "
            "stopped before the write (when='write')") in err
    assert f"    #0 {script}:{write} in <module>\n         h.mul_(2)  # WRITE\n" in err
    assert (f"SUMMARY: gradguard: saved-tensor-mutated {script}:{write} in <module> "
            "(Tensor.mul_)") in err
    assert "after the write" in proc.stdout and proc.stdout.splitlines()[-1] == "parent done"


def test_at_the_write_the_saving_op_is_named():
    """`when="write"` stops before any backward runs, so no backward node says who saved
    the tensor: the saver is found in the graph (a saved input, a saved output)."""
    import torch

    import gradguard

    with gradguard.detect(when="write", on_conflict="record") as s:
        w = torch.randn(4, requires_grad=True)
        a = torch.randn(4)
        y = w * a  # SAVE-INPUT
        a.add_(1)  # WRITE-INPUT
        h = torch.tanh(w)  # SAVE-OUTPUT
        h.mul_(2)  # WRITE-OUTPUT
        del y
    first, second = s.conflicts
    assert first.detail == ("this write would overwrite f32[4] cpu v0, saved for backward by "
                            "mul; stopped before the write (when='write')")
    assert (first.saved.op, first.saved.node) == ("mul", "MulBackward0")
    assert first.saved.user_site.line == line_of("SAVE-INPUT")
    assert first.write.user_site.line == line_of("WRITE-INPUT")
    assert (second.saved.op, second.saved.node) == ("tanh", "TanhBackward0")
    report = s.report()
    assert (f"SAVED by tanh for backward node TanhBackward0\n    #0 {__file__}:"
            f"{line_of('SAVE-OUTPUT')} in test_at_the_write_the_saving_op_is_named\n"
            "         h = torch.tanh(w)  # SAVE-OUTPUT\n") in report
    assert "SAVED by ?" not in report
    assert first.fix == "write `a = a.add(1)` instead of `a.add_(1)`"
