"""`gradguard run` covers Python child processes, the way coverage.py measures
subprocesses: the installed .pth start hook gives each child a session, each child writes
its report, and the parent's exit report merges them -- or names the child it could not
check. Real subprocesses, a real torchrun and a real accelerate launch (gloo, CPU)."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from childenv import environ
from helpers import line_of

from gradguard._cli.children import ENV_VAR

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PTH = "gradguard_subprocess.pth"

CHILD = '''\
import torch


def step(x):
    y = torch.tanh(x)  # SAVE
    y.data.mul_(2)  # WRITE
    y.sum().backward()


step(torch.randn(4, 3, requires_grad=True))
print("child done", flush=True)
'''


def gradguard_run(*argv, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "gradguard", "run", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, env=env or environ(),
                          timeout=timeout)


def test_the_start_hook_is_installed_beside_the_package():
    dirs = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    installed = [Path(d, PTH) for d in dirs if Path(d, PTH).exists()]
    assert installed, f"{PTH} is not in site-packages: install with pip install -e ."
    assert installed[0].read_text() == (ROOT / "src" / PTH).read_text()


def test_the_start_hook_costs_nothing_when_not_asked_for():
    probe = "import sys; print(sorted(m for m in sys.modules if m.startswith(('gradguard', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=environ(), check=True).stdout
    assert out == "[]\n"


@pytest.mark.slow
def test_children_are_checked_and_the_ones_that_cannot_be_are_named(tmp_path):
    (tmp_path / "child.py").write_text(CHILD)
    parent = tmp_path / "parent.py"
    parent.write_text(textwrap.dedent('''\
        import subprocess, sys
        run = lambda *a: subprocess.run([sys.executable, *a], check=True)
        run("child.py")  # checked: its conflict is reported
        run("-c", "print('no torch')")  # checked, nothing to report
        run("-S", "-c", "pass")  # no site: the start hook cannot run
        run("-c", "import os, torch; os._exit(0)")  # dies before writing its report
        run("-m", "gradguard", "run", "--exit-code", "0", "child.py")  # one session only
        print("parent done")
    '''))
    proc = gradguard_run("--json", tmp_path / "report.json", parent, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # the children's conflicts count
    assert proc.stdout.splitlines() == ["child done", "no torch", "child done", "parent done"]
    err = proc.stderr.splitlines()
    write = line_of("WRITE", str(tmp_path / "child.py"))
    summary = f"SUMMARY: gradguard: saved-tensor-mutated {tmp_path / 'child.py'}:{write} in step (Tensor.mul_)"

    data = json.loads((tmp_path / "report.json").read_text())
    # child.py and the nested run; a child that never imported torch has nothing to list
    assert len(data["children"]) == 2
    plain = next(k for k in data["children"] if k["argv"] == ["child.py"] and k["report"]["conflicts"])
    pid = plain["pid"]
    # streamed when found, then the child's report at the parent's exit
    assert err.count(f"[pid{pid}] {summary}") == 2
    assert f"[pid{pid}] ==== gradguard: saved-tensor-mutated [GGR101]" in err
    # the nested `gradguard run` printed its own report (one session: streamed once,
    # reported once); the parent repeats only its SUMMARY line
    assert err.count(summary) == 2
    assert sum(line.startswith("[pid") and "==== gradguard:" in line for line in err) == 1
    assert sum(line == "==== gradguard: saved-tensor-mutated [GGR101]" for line in err) == 1
    gaps = [line for line in err if line.startswith("  - ")]
    assert len(gaps) == 2
    assert "-S -c pass) ran without gradguard's start hook" in gaps[0] or \
           "-S -c pass) ran without gradguard's start hook" in gaps[1]
    assert any("os._exit(0)) started under gradguard but wrote no report" in g for g in gaps)
    assert "gradguard: no in-place conflicts found in this process" in err
    assert "gradguard: no in-place conflicts found" not in err  # children could not be checked
    assert err[-1] == "gradguard: 2 child processes checked; 2 conflicts in all (2 in child processes)"
    assert data["conflicts"] == [] and len(data["coverage_gaps"]) == 2
    assert (tmp_path / f"report.pid{pid}.json").exists()  # each child's own JSON, too


def test_quiet_and_the_environment_are_restored(tmp_path, capsys, monkeypatch):
    from gradguard._cli.main import main

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    assert main(["run", "--quiet", str(script)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("==== gradguard: ") and err.count("SUMMARY:") == 1
    monkeypatch.setenv("GRADGUARD_OPTIONS", "quiet=1")
    assert main(["run", str(script)]) == 1
    assert capsys.readouterr().err.count("SUMMARY:") == 1
    monkeypatch.delenv("GRADGUARD_OPTIONS")
    assert main(["run", str(script)]) == 1
    assert capsys.readouterr().err.count("SUMMARY:") == 2  # streamed, and in the report
    assert ENV_VAR not in os.environ


def ddp_checks(proc, tmp_path):
    script, helper = EXAMPLES / "train_ddp.py", EXAMPLES / "weight_norm_data.py"
    assert proc.returncode == 1, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} step 1: loss " in proc.stdout
    write = line_of("a write autograd cannot see", str(helper))
    summary = f"SUMMARY: gradguard: saved-tensor-mutated {helper}:{write} in normalise_ (Tensor.div_)"
    err = proc.stderr.splitlines()
    assert err.count(f"[rank1] {summary}") == 2  # streamed, then in rank 1's report
    assert "[rank0] gradguard: no in-place conflicts found" in err
    assert "[rank1] ==== gradguard: saved-tensor-mutated [GGR101]" in err
    assert err[-1] == "gradguard: 2 child processes checked; 1 conflict in all (1 in child processes)"
    merged = json.loads((tmp_path / "report.json").read_text())
    assert [(k["rank"], len(k["report"]["conflicts"])) for k in merged["children"]] == [(0, 0), (1, 1)]
    rank1 = json.loads((tmp_path / "report.rank1.json").read_text())
    (c,) = rank1["conflicts"]
    assert c["mutation"]["stack"][1]["line"] == line_of("BUG: before backward, on this rank only",
                                                        str(script))
    assert json.loads((tmp_path / "report.rank0.json").read_text())["conflicts"] == []


@pytest.mark.slow
def test_torchrun_children_are_checked(tmp_path):
    proc = gradguard_run("--json", tmp_path / "report.json", "-m", "torch.distributed.run",
                         "--standalone", "--nproc-per-node", "2", EXAMPLES / "train_ddp.py",
                         "--steps", "2", cwd=tmp_path)
    ddp_checks(proc, tmp_path)


@pytest.mark.slow
def test_accelerate_launch_children_are_checked(tmp_path):
    pytest.importorskip("accelerate")
    env = environ(HF_HOME=str(tmp_path / "hf"), ACCELERATE_DISABLE_RICH="1")
    proc = gradguard_run("--json", tmp_path / "report.json", "-m", "accelerate.commands.launch",
                         "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                         "--mixed_precision", "no", "--dynamo_backend", "no",
                         EXAMPLES / "train_ddp.py", "--steps", "2", cwd=tmp_path, env=env)
    ddp_checks(proc, tmp_path)
