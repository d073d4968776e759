"""What makes a saved tensor "silently wrong" is its bytes at backward time, not the fact
that something wrote it: a write that is undone before backward changed nothing."""
import inspect

import pytest
import torch
from torch import nn

import gradguard


def _line_of(marker: str) -> int:
    """Line number, in this file, of the line that ends with the comment ``# <marker>``."""
    lines, start = inspect.getsourcelines(inspect.getmodule(_line_of))
    for i, text in enumerate(lines):
        if text.rstrip().endswith(f"# {marker}"):
            return start + i if start else i + 1
    raise LookupError(marker)


def test_gradcheck_and_gradgradcheck_pass_under_detect_raise():
    # gradcheck perturbs an input through `.data`, evaluates, and puts it back bit-exactly
    x = torch.rand(5, dtype=torch.double, requires_grad=True)
    y = torch.rand(5, dtype=torch.double, requires_grad=True)

    def fn(a, b):
        return (a * b).sin() * a

    with gradguard.detect(on_conflict="raise") as session:
        assert torch.autograd.gradcheck(fn, (x, y))
        assert torch.autograd.gradgradcheck(fn, (x, y))
    assert session.conflicts == []


def _ema_step(model: nn.Module, x: torch.Tensor, ema: dict, swap: bool) -> dict:
    loss = model(x).square().sum()
    if swap:  # EMA store / copy_to / restore between forward and backward
        backups = {}
        for name, p in model.named_parameters():
            backups[name] = p.detach().clone()
            p.data.copy_(ema[name])
        for name, p in model.named_parameters():
            p.data.copy_(backups[name])
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_ema_write_then_restore_through_data_reports_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    ema = {name: p.detach() * 0.5 for name, p in model.named_parameters()}
    reference = _ema_step(model, x, ema, swap=False)
    model.zero_grad()
    with gradguard.detect(on_conflict="record") as session:
        grads = _ema_step(model, x, ema, swap=True)
    assert session.conflicts == [], session.report()
    for name in reference:
        assert torch.equal(grads[name], reference[name]), name


def test_two_changing_writes_name_the_first_and_list_both():
    w = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(2, 3, requires_grad=True)
    with gradguard.detect(on_conflict="record") as session:
        y = (x @ w).sum()
        w.data.add_(1.0)  # first-write
        w.data.mul_(2.0)  # second-write
        y.backward()
    assert len(session.conflicts) == 1, session.report()
    conflict = session.conflicts[0]
    assert conflict.write.site.line == _line_of("first-write")
    # every write that changed the saved bytes, in order (field name chosen here: `writes`)
    writes = getattr(conflict, "writes", None)
    assert writes is not None, "Conflict has no `writes` list"
    assert [m.site.line for m in writes] == [_line_of("first-write"), _line_of("second-write")]


@pytest.mark.parametrize("mode", ["record", "warn", "raise"])
def test_a_moved_version_is_still_fatal(mode):
    a = torch.randn(4, requires_grad=True).clone()
    with gradguard.detect(on_conflict=mode):
        b = a.sin()
        a.add_(1.0)  # bumps the version: stock PyTorch rejects this backward
        with pytest.raises(gradguard.InplaceConflictError) as info:
            b.sum().backward()
    assert isinstance(info.value, RuntimeError)
