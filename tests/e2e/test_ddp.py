"""A real 2-process DDP run (gloo, CPU) under torchrun with `-m gradguard run`: each rank
reports for itself, prefixed with its rank, and writes its own JSON report.

examples/train_ddp.py has the `.data` bug on rank 1 only. The options come from
GRADGUARD_OPTIONS, as they would from a launcher whose command line is fixed.
`exit_code=0`: torchrun stops the other ranks as soon as one exits non-zero, which could
cut rank 0 short before it writes its report (see docs/run.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from helpers import line_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def test_two_ranks_each_report_for_themselves(tmp_path):
    script, helper = EXAMPLES / "train_ddp.py", EXAMPLES / "weight_norm_data.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "GRADGUARD_OPTIONS": f"json={tmp_path / 'report.json'}:exit_code=0"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "gradguard", "run", str(script), "--steps", "2"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):  # both ranks trained to the end
        assert f"rank {rank} step 1: loss " in proc.stdout

    rank0 = json.loads((tmp_path / "report.rank0.json").read_text())
    rank1 = json.loads((tmp_path / "report.rank1.json").read_text())
    assert not (tmp_path / "report.json").exists()
    assert rank0["conflicts"] == []
    assert {k: rank0["run"][k] for k in ("rank", "world_size")} == {"rank": 0, "world_size": 2}
    assert {k: rank1["run"][k] for k in ("rank", "world_size")} == {"rank": 1, "world_size": 2}
    (c,) = rank1["conflicts"]  # deduplicated by write site: both steps hit the same line
    write_line = line_of("a write autograd cannot see", str(helper))
    assert (c["mutation"]["file"], c["mutation"]["line"]) == (str(helper), write_line)
    assert c["mutation"]["stack"][1]["line"] == line_of(
        "BUG: before backward, on this rank only", str(script))
    assert c["tensor"]["name"] == "model.module.head.weight"

    err = proc.stderr.splitlines()
    assert "[rank0] gradguard: no in-place conflicts found" in err
    assert "[rank1] ==== gradguard: saved-tensor-mutated [GGR101]" in err
    assert (f"[rank1] SUMMARY: gradguard: saved-tensor-mutated {helper}:{write_line} in "
            "normalise_ (Tensor.div_)") in err
    ours = [line for line in err if line.startswith("[rank")]
    assert not any(line.startswith("[rank0] ====") for line in ours)
    assert len(ours) == 1 + len([line for line in err if line.startswith("[rank1]")])
