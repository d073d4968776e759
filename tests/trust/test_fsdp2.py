"""FSDP2 (`fully_shard`) with in-place ReLUs: gradguard must stay silent and change nothing.

FSDP2 all-gathers parameters into storages it frees (resize to 0) after forward and
re-materialises before backward, writing the same values back with
`split_with_sizes_copy(out=)` under `_unsafe_preserve_version_counter`. Nothing a
backward needs is ever different, so a correct sanitizer reports nothing.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch.distributed.fsdp")
import torch.distributed as dist  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "fsdp2_train.py")
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
CLEAN = "gradguard: no in-place conflicts found"


def _torchrun(gradguard_args, cwd: str) -> subprocess.CompletedProcess:
    """torchrun the script; under `gradguard run <gradguard_args>` unless that is None."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    if gradguard_args is not None:
        cmd += ["-m", "gradguard", "run", *gradguard_args]
    # A copy outside the repository: its [tool.gradguard] exclude lists tests/, which would
    # hide every finding in the script where it lies.
    script = os.path.join(cwd, "fsdp2_train.py")
    shutil.copyfile(SCRIPT, script)
    cmd.append(script)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=cwd)


def _losses(out: str) -> list[tuple[str, str, str]]:
    # the ranks share stdout, so lines can interleave: match the records, not lines
    return sorted(re.findall(r"rank (\d+) step (\d+) loss ([-+0-9.e]+|nan|inf)", out))


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> list[tuple[str, str, str]]:
    proc = _torchrun(None, cwd=str(tmp_path_factory.mktemp("plain")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = _losses(proc.stdout)
    assert len(losses) == 6, proc.stdout
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("mode", [(), ("--mode", "protect")], ids=["detect", "protect"])
def test_fsdp2_inplace_relu_is_clean_and_bit_identical(plain, mode, tmp_path):
    proc = _torchrun(list(mode), cwd=str(tmp_path))
    both = proc.stdout + proc.stderr
    assert proc.returncode == 0, both[-4000:]
    assert "SUMMARY: gradguard" not in both, both[-4000:]
    assert both.count(CLEAN) == 2, both[-4000:]  # one clean line per rank
    assert _losses(proc.stdout) == plain
