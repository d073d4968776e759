"""Links between sessions are computed on every enter and cleared on exit: a session object
reused later never carries a link (a parent, a protector) from an earlier use."""
from __future__ import annotations

import pytest
import torch

import gradguard


def _tanh_then_write():
    x = torch.randn(4, 3, requires_grad=True)
    h = torch.tanh(x)  # saves its output
    h.mul_(2)  # moves its version: stock PyTorch rejects the backward
    h.sum().backward()


def test_stock_pytorch_rejects_the_program():
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _tanh_then_write()


def test_a_session_used_inside_protect_does_not_repair_when_used_alone():
    guard = gradguard.detect(on_conflict="record")
    with gradguard.protect():
        with guard:
            _tanh_then_write()  # repaired: protect encloses the detect session
    assert [c.repaired for c in guard.conflicts] == [True]
    assert guard.parent is None and guard.protector is None
    with pytest.raises(gradguard.InplaceConflictError, match="modified by an inplace"):
        with guard:  # alone now: rejected exactly as stock PyTorch rejects it
            _tanh_then_write()


def test_a_nested_session_reused_alone_reports_only_to_itself():
    inner = gradguard.detect(on_conflict="record")
    with gradguard.detect(on_conflict="record") as outer:
        with inner:
            pass
    assert inner.parent is None
    x = torch.randn(3, requires_grad=True)
    with inner:
        y = x.exp()
        y.data.zero_()  # silent: recorded, not raised
        y.sum().backward()
    assert len(inner.conflicts) == 1
    assert outer.conflicts == []  # the long-exited outer session gets nothing


def test_reentering_the_same_session_keeps_its_links_until_the_last_exit():
    with gradguard.protect() as p:
        guard = gradguard.detect(on_conflict="record")
        with guard:
            with guard:
                assert guard.protector is p
            assert guard.protector is p and guard.active
        assert not guard.active and guard.protector is None
