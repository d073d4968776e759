"""Fixed programs must run and give the same gradients as a hand-written reference
(real torch autograd), where the original program failed in backward."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

torch = pytest.importorskip("torch")

from gradguard._cli.main import main  # noqa: E402
from gradguard.lint.engine import resolve_selection  # noqa: E402
from gradguard.lint.fixer import fix_source  # noqa: E402

PROGRAMS = {
    "sigmoid_mul_": (
        """import torch

def compute(x, w):
    h = x @ w
    y = torch.sigmoid(h)
    y.mul_(2)
    y += 1
    return (y * y).sum()
""",
        lambda x, w: ((torch.sigmoid(x @ w) * 2 + 1) ** 2).sum(),
    ),
    "iadd_after_matmul": (
        """import torch

def compute(x, w):
    a = torch.relu(x) * 1.0
    h = a @ w
    a += 1
    return h.sum() + (a * a).sum()
""",
        lambda x, w: (torch.relu(x) @ w).sum() + ((torch.relu(x) + 1) ** 2).sum(),
    ),
    "setitem_after_exp": (
        """import torch

def compute(x, w):
    y = torch.exp(x @ w)
    y[:, 0] = 0
    return y.sum()
""",
        lambda x, w: torch.cat([torch.zeros(x.shape[0], 1), torch.exp(x @ w)[:, 1:]], dim=1).sum(),
    ),
    "functional_inplace": (
        """import torch
import torch.nn.functional as F

def compute(x, w):
    t = torch.tanh(x @ w)
    out = F.relu(t, inplace=True)
    return (out * out).sum()
""",
        lambda x, w: (torch.relu(torch.tanh(x @ w)) ** 2).sum(),
    ),
    "sequential": (
        """import torch
import torch.nn as nn

def compute(x, w):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.ReLU(inplace=True))
    return (net(x @ w) ** 2).sum()
""",
        None,  # reference: the same network built without inplace=True
    ),
}


def _sequential_reference(x, w):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sigmoid(), torch.nn.ReLU())
    return (net(x @ w) ** 2).sum()


def _load(source: str) -> Callable:
    namespace: dict = {}
    exec(compile(source, "<program>", "exec"), namespace)
    return namespace["compute"]


def _grads(fn: Callable) -> tuple:
    torch.manual_seed(1)
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)
    fn(x, w).backward()
    return x.grad, w.grad


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_fixed_program_matches_reference_gradients(name: str) -> None:
    source, reference = PROGRAMS[name]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _grads(_load(source))
    result = fix_source(source, f"{name}.py", resolve_selection())
    assert result.fixed and result.source != source
    got = _grads(_load(result.source))
    want = _grads(reference or _sequential_reference)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


def test_data_fix_keeps_initialisation() -> None:
    source = """import torch.nn as nn

def init(m):
    m.weight.data.normal_(0.0, 0.02)
    m.bias.data.zero_()
    m.weight.data[:, 0] = 1.0
    m.bias.data += 0.5
"""
    result = fix_source(source, "init.py", resolve_selection())
    assert "with torch.no_grad():" in result.source and ".data" not in result.source
    layers = []
    for src in (source, result.source):
        namespace: dict = {}
        exec(src, namespace)
        torch.manual_seed(0)
        layer = torch.nn.Linear(4, 4)
        namespace["init"](layer)
        layers.append(layer)
    torch.testing.assert_close(layers[0].weight, layers[1].weight)
    torch.testing.assert_close(layers[0].bias, layers[1].bias)


REPORT_SCRIPT = """import torch


def compute(x, w):
    h = x @ w
    s = torch.sigmoid(h)
    s.mul_(2)
    t = s + 0
    t[:, 0] = 0
    return (h * t).sum()
"""


def _report(path: Path, lines: list) -> dict:
    return {
        "version": 1,
        "conflicts": [
            {"kind": "inplace", "code": "GG-RUNTIME", "mutation": {"op": op, "file": str(path), "line": line,
                                                                 "function": "compute", "stack": []},
             "saved": {"op": "SigmoidBackward0"}, "tensor": {"shape": [3, 4]}, "overlap": "full", "fix": ""}
            for line, op in lines
        ],
        "summary": {"conflicts": len(lines)},
    }


def test_fix_from_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = tmp_path / "train.py"
    script.write_text(REPORT_SCRIPT)
    report = tmp_path / "report.json"
    # line 9 (`t[:, 0] = 0`) is not a lint finding: t is fresh. The report says it conflicted, so it is fixed too.
    report.write_text(json.dumps(_report(script, [(7, "mul_"), (9, "copy_"), (7, "mul_")])))
    assert main(["fix", "--from-report", str(report)]) == 0
    fixed = script.read_text()
    assert "    s = s.mul(2)\n" in fixed and "    t = t.clone()\n    t[:, 0] = 0\n" in fixed
    assert "Fixed 2 of 2 reported write sites." in capsys.readouterr().out
    namespace: dict = {}
    exec(fixed, namespace)
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)
    namespace["compute"](x, w).backward()  # no longer raises
    assert x.grad is not None


def test_fix_from_report_reports_unfixable_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = tmp_path / "train.py"
    script.write_text(REPORT_SCRIPT)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report(script, [(5, "mm"), (7, "mul_")])))
    assert main(["fix", "--from-report", str(report), "--diff"]) == 1
    captured = capsys.readouterr()
    assert f"{script}:5: cannot fix `mm`: no in-place write" in captured.err
    assert "+    s = s.mul(2)" in captured.out
    assert script.read_text() == REPORT_SCRIPT  # --diff changes nothing


@pytest.mark.parametrize("content, message", [
    ("{", "is not valid JSON"),
    ('{"version": 2, "conflicts": []}', "has version 2"),
    ('{"version": 1}', 'has no "conflicts" list'),
    ('{"version": 1, "conflicts": [{"mutation": {}}]}', "conflict #0 has no mutation.file/mutation.line"),
])
def test_bad_report_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture, content: str, message: str) -> None:
    report = tmp_path / "report.json"
    report.write_text(content)
    assert main(["fix", "--from-report", str(report)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


TWIN_SCRIPT = """import torch


def compute(x, w):
    h = torch.sigmoid(x @ w)
    h.zero_()  # reset
    g = torch.exp(x)
    g.mul_(2)
    w.data.mul_(0.5)
    return h.sum() + g.sum()
"""


def test_fix_from_report_uses_the_twins_and_their_safety(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The runtime's sites are rewritten with _findings.twins: `g.mul_(2)` (a local)
    # safely; `h.zero_()` -> `torch.zeros_like(h)` (stops requiring grad) and the
    # `.data` write (no_grad would make backward raise) only with --unsafe-fixes.
    script = tmp_path / "train.py"
    script.write_text(TWIN_SCRIPT)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report(script, [(6, "zero_"), (8, "mul_"), (9, "mul_")])))
    assert main(["fix", "--from-report", str(report)]) == 1
    err = capsys.readouterr().err
    assert f"{script}:6: fix is unsafe" in err and f"{script}:9: fix is unsafe" in err
    text = script.read_text()
    assert "    g = g.mul(2)\n" in text and "    h.zero_()  # reset\n" in text and "w.data.mul_(0.5)" in text
    script.write_text(TWIN_SCRIPT)
    assert main(["fix", "--from-report", str(report), "--unsafe-fixes"]) == 0
    text = script.read_text()
    assert "    h = torch.zeros_like(h)  # reset\n" in text
    assert "    with torch.no_grad():\n        w.mul_(0.5)\n" in text
