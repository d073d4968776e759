"""torch.compile under `gradguard run`: a compiled model's training step gives bit-identical
results, the report says once that compiled regions were not intercepted, and eager
writes into what a compiled graph saved are still caught.

`backend="aot_eager"` runs AOTAutograd (functionalization, the compiled autograd.Function
and its saved tensors) without inductor's C++ compile, so the test stays fast.
"""
from __future__ import annotations

import runpy
import sys

import pytest
import torch
from helpers import line_of

from gradguard._cli.main import main
from gradguard._cli.run import COMPILE_GAP

TRAIN = '''\
import sys
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
compiled = torch.compile(model, backend="aot_eager")
opt = torch.optim.AdamW(model.parameters(), lr=0.01)
losses = []
for step in range(3):
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    h = compiled(x)  # SAVE
    if sys.argv[2] == "bug":
        x.add_(1)  # WRITE: eager, into what the compiled graph saved
    loss = torch.nn.functional.mse_loss(torch.relu(h), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.detach())
torch.save({"losses": losses, "params": [p.detach() for p in model.parameters()],
            "grads": [p.grad for p in model.parameters()]}, sys.argv[1])
'''
GAP_START = COMPILE_GAP.split("(")[0]  # "torch.compile ran "


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train_compiled.py"
    path.write_text(TRAIN)
    torch._dynamo.reset()
    yield path
    torch._dynamo.reset()


def test_compiled_training_step_is_bit_identical_and_the_gap_is_reported_once(
        script, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "plain.pt"), "ok"])
    runpy.run_path(str(script), run_name="__main__")
    torch._dynamo.reset()  # compile again under gradguard, as a fresh process would
    capsys.readouterr()

    assert main(["run", str(script), str(tmp_path / "guarded.pt"), "ok"]) == 0
    err = capsys.readouterr().err
    plain, guarded = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "guarded.pt")
    for key in ("losses", "params", "grads"):
        assert all(torch.equal(a, b) for a, b in zip(plain[key], guarded[key], strict=True))
    assert err.startswith("gradguard: no in-place conflicts found\ngradguard: coverage gaps:\n")
    assert err.count(GAP_START) == 1 and "  - torch.compile ran (1 graph): " in err


def test_eager_write_into_a_compiled_graphs_saved_tensor_is_caught(script, tmp_path, capsys):
    assert main(["run", str(script), str(tmp_path / "bug.pt"), "bug"]) == 1
    err = capsys.readouterr().err
    report = err.split("(gradguard: the report follows)\n")[1]
    lines = report.splitlines()
    write = line_of("WRITE: eager, into what the compiled graph saved", str(script))
    assert f"    #0 {script}:{write} in <module>" in lines
    assert f"    #0 {script}:{line_of('SAVE', str(script))} in <module>" in lines
    assert "SAVED by CompiledFunction for backward node CompiledFunctionBackward" in lines
    assert report.count(GAP_START) == 1
