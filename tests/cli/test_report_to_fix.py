"""Closing the loop: a real runtime report drives `gradguard fix --from-report`."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import gradguard
from gradguard._cli.main import main

PROGRAM = '''\
import torch


def step(x):
    h = torch.sigmoid(x)
    h.relu_()  # the runtime report names this line
    return (h * h).sum()
'''


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"prog_{path.stat().st_mtime_ns}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runtime_report_fixes_exactly_the_conflicting_line(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    x = torch.randn(5, requires_grad=True)

    with gradguard.detect(on_conflict="record") as session:
        with pytest.raises(gradguard.InplaceConflictError):
            _load(script).step(x).backward()
    report = tmp_path / "report.json"
    report.write_text(json.dumps(session.to_dict()))
    assert session.to_dict()["conflicts"][0]["mutation"]["file"] == str(script)

    assert main(["fix", "--from-report", str(report)]) == 0
    fixed = script.read_text()
    assert "h = h.relu()" in fixed and "h.relu_()" not in fixed

    x.grad = None
    with gradguard.detect() as clean:
        _load(script).step(x).backward()
    assert clean.conflicts == []
    h = torch.sigmoid(x.detach())
    expected = 2 * h.relu() * h * (1 - h)  # d/dx relu(sigmoid(x))^2, sigmoid > 0
    assert torch.allclose(x.grad, expected)
