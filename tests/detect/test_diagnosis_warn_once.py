"""`on_conflict="warn"` warns once per conflict, not once per step of a training loop."""
from __future__ import annotations

import warnings

import torch
from helpers import line_of

import gradguard

HERE = __file__


def step(x: torch.Tensor) -> None:
    y = x.exp()  # SAVE
    y.data.zero_()  # WRITE
    y.sum().backward()


def test_a_conflict_recurring_every_step_warns_once():
    x = torch.randn(3, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradguard.detect(on_conflict="warn") as s:
            for _ in range(5):
                step(x)
    ours = [w for w in caught if issubclass(w.category, gradguard.InplaceConflictWarning)]
    assert len(ours) == 1
    assert len(s.conflicts) == 1
    w = ours[0]
    assert (w.filename, w.lineno) == (HERE, line_of("WRITE"))
    assert str(w.message) == (
        f"gradguard: saved-tensor-mutated {HERE}:{line_of('WRITE')} in step (Tensor.zero_): "
        f"ExpBackward0 needs f32[3] cpu v0, saved at version 0; its version did not move "
        "(the write went through `.data`, which has its own version counter), so PyTorch "
        "would not notice and the gradient is silently wrong. Fix: do not write through "
        "`.data` (it hides the write from autograd): do the update after `backward()` under "
        "`with torch.no_grad():` on the tensor itself, or clone before writing")


def test_two_different_conflicts_warn_once_each():
    x = torch.randn(3, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradguard.detect(on_conflict="warn"):
            for _ in range(3):
                step(x)
                y = x.sin()  # SAVE-2
                x.data.mul_(2.0)  # WRITE-2
                y.sum().backward()
    lines = sorted(w.lineno for w in caught
                   if issubclass(w.category, gradguard.InplaceConflictWarning))
    assert lines == sorted([line_of("WRITE"), line_of("WRITE-2")])
