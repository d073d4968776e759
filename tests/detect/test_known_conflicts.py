"""A conflict found again in a long-lived session (every step of a training loop) skips the
fingerprint and the report -- but only where that changes nothing: every enclosing session
already has it, the mode neither raises nor stops at the write."""
from __future__ import annotations

import pytest
import torch

import gradguard


def _step(lin: torch.nn.Linear, x: torch.Tensor, delta: float) -> None:
    loss = lin(x).square().sum()
    lin.weight.data.add_(delta)  # silent: the version does not move
    loss.backward()


def _setup():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 3), torch.randn(2, 3, requires_grad=True)


def test_found_again_in_one_session_is_reported_once():
    lin, x = _setup()
    shared = gradguard.detect(on_conflict="record")
    for i in range(4):
        with shared:
            _step(lin, x, 0.5 if i % 2 else -0.5)
    assert len(shared.conflicts) == 1


def test_an_outer_session_new_to_it_still_gets_it():
    lin, x = _setup()
    inner = gradguard.detect(on_conflict="record")
    with inner:
        _step(lin, x, 0.5)
    with gradguard.detect(on_conflict="record") as outer:
        with inner:
            _step(lin, x, -0.5)
    assert len(inner.conflicts) == 1
    assert len(outer.conflicts) == 1
    assert outer.conflicts[0].dedup_key() == inner.conflicts[0].dedup_key()


def test_raise_mode_raises_every_time():
    lin, x = _setup()
    guard = gradguard.detect()
    for delta in (0.5, -0.5, 0.5):
        with pytest.raises(gradguard.InplaceConflictError):
            with guard:
                _step(lin, x, delta)


def test_a_restoring_write_after_a_known_conflict_is_still_clean():
    lin, x = _setup()
    shared = gradguard.detect(on_conflict="record")
    with shared:
        _step(lin, x, 0.5)
    with gradguard.detect(on_conflict="record") as fresh:
        loss = lin(x).square().sum()
        kept = lin.weight.detach().clone()
        lin.weight.data.add_(0.5)
        lin.weight.data.copy_(kept)  # restored: the bytes backward reads are the saved ones
        loss.backward()
    assert fresh.conflicts == []
    assert len(shared.conflicts) == 1


def test_after_a_known_write_a_restore_adds_nothing_and_a_moved_version_still_raises():
    lin, x = _setup()
    shared = gradguard.detect(on_conflict="record")
    with shared:
        _step(lin, x, 0.5)
    with shared:  # the known write, then one that puts the bytes back: nothing new
        loss = lin(x).square().sum()
        kept = lin.weight.detach().clone()
        lin.weight.data.add_(0.5)
        lin.weight.data.copy_(kept)  # RESTORE
        loss.backward()
    assert len(shared.conflicts) == 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        with shared:  # the known write, then one PyTorch sees: stock's error, as without us
            loss = lin(x).square().sum()
            lin.weight.data.add_(0.5)
            with torch.no_grad():
                lin.weight.mul_(1.0)
            loss.backward()
