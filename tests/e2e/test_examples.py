"""Every example in examples/ through `gradguard run`: the buggy run reports the exact
write and save lines; the fixed twin (`--fixed`) is clean and prints bit-identical
losses with and without gradguard.

The runs are in-process (`cli.main`, the console script's code): a subprocess would pay
~3 s to import torch again. Real subprocesses of the CLI run in tests/test_run_cli.py
(bad input), tests/test_ddp.py (torchrun) and CI's quickstart.
"""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from helpers import line_of

from gradguard._cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# example -> what its report must say. Lines are found by the marker comments in the
# example files; `write` is the innermost write frame, `bug` the line the example marks.
CASES = {
    "gan_step_order": dict(
        write="BUG: changes disc's weights while loss_g still needs them",
        write_function="train_step", op="Tensor.addcdiv_", via="torch.optim",
        save="saves fc2.weight for backward", save_function="Discriminator.forward",
        tensor="disc.fc2.weight", fatal=True),
    "sigmoid_relu_inplace": dict(
        write="BUG with inplace=True: writes over g", write_function="GatedBlock.forward",
        op="torch.relu_", via=None, save="sigmoid saves its output g",
        save_function="GatedBlock.forward", tensor=None, fatal=True),
    "attention_mask_inplace": dict(
        write="BUG: zeroes padded keys in the saved output",
        write_function="SelfAttention.forward", op="Tensor.masked_fill_", via=None,
        save="softmax saves its output", save_function="SelfAttention.forward", tensor=None,
        fatal=True),
    "weight_norm_data": dict(
        write="a write autograd cannot see", write_function="normalise_", op="Tensor.div_",
        via=None, bug="BUG: before backward, which needs the old weight",
        save="saves head.weight for backward", save_function="CosineClassifier.forward",
        tensor="model.head.weight", fatal=False),
}
NOT_STANDALONE = {"example_utils", "train_ddp"}  # a helper; DDP runs in tests/test_ddp.py


def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == set(CASES) | NOT_STANDALONE


@pytest.mark.parametrize("name", CASES)
def test_buggy_example_reports_the_write_and_the_save(name, tmp_path, capsys, example_modules):
    case = CASES[name]
    path = str(EXAMPLES / f"{name}.py")
    assert main(["run", "--json", str(tmp_path / "r.json"), path]) == 1
    stdout, stderr = capsys.readouterr()
    (c,) = json.loads((tmp_path / "r.json").read_text())["conflicts"]
    write_line, save_line = line_of(case["write"], path), line_of(case["save"], path)
    assert c["code"] == "GGR101"
    m, s = c["mutation"], c["saved"]
    assert (m["file"], m["line"], m["function"], m["op"], m["via"]) == (
        path, write_line, case["write_function"], case["op"], case["via"])
    assert (s["file"], s["line"], s["function"]) == (path, save_line, case["save_function"])
    assert c["tensor"]["name"] == case["tensor"]
    if "bug" in case:  # the helper's caller, one frame out
        assert m["stack"][1]["line"] == line_of(case["bug"], path)
    assert stderr.splitlines()[-1] == (
        f"SUMMARY: gradguard: saved-tensor-mutated {path}:{write_line} in "
        f"{case['write_function']} ({case['op']})")
    if case["fatal"]:  # stock PyTorch fails too: the script dies in its first step
        assert "Traceback (most recent call last):" in stderr
        assert ("gradguard.InplaceConflictError: one of the variables needed for "
                "gradient computation has been modified by an inplace operation") in stderr
        assert stdout == ""
    else:  # silent in stock PyTorch: recorded, and the script runs to its end
        assert "Traceback" not in stderr
        assert stdout.count("step ") == 3 and stdout.startswith("step 0: loss ")


@pytest.mark.parametrize("name", CASES)
def test_fixed_twin_is_clean_and_bit_identical(name, capsys, monkeypatch, example_modules):
    path = str(EXAMPLES / f"{name}.py")
    monkeypatch.setattr(sys, "argv", [path, "--fixed"])
    runpy.run_path(path, run_name="__main__")
    plain = capsys.readouterr()

    assert main(["run", path, "--fixed"]) == 0
    guarded = capsys.readouterr()
    assert guarded.out == plain.out and plain.out.count("step ") == 3
    assert guarded.err == "gradguard: no in-place conflicts found\n"
