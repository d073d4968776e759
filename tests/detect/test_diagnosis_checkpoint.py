"""Checkpointing. (a) A reentrant checkpoint reruns its function during backward: a
conflict made by a write in that recomputation names the `checkpoint(...)` call it
belongs to and says that recomputation runs at backward."""
from __future__ import annotations

import pytest
import torch
from helpers import line_of
from torch.utils.checkpoint import checkpoint

import gradguard

HERE = __file__


def _recomputed(source: str, marker: str) -> str:
    return (f"; the write ran in the recomputation of `{source}` at {HERE}:{line_of(marker)}: "
            "a reentrant checkpoint (use_reentrant=True) runs its function twice, under "
            "no_grad in forward (which saves nothing for backward) and again during backward "
            "with grad enabled, where this write ran")


def _again(source: str, marker: str) -> str:
    return (f"; that line runs again at backward, when `{source}` at {HERE}:{line_of(marker)} "
            "recomputes its region")


def _rejected_as_stock_does(program, stock_error: str):
    """Stock PyTorch raises ``stock_error``; under detect() the program raises gradguard's
    error (a RuntimeError too); the one conflict found."""
    with pytest.raises(RuntimeError, match=stock_error):
        program()
    with gradguard.detect() as session, pytest.raises(gradguard.InplaceConflictError):
        program()
    (c,) = session.conflicts
    return c


def scaled_sigmoid(t):
    y = torch.sigmoid(t)  # SAVE-SIGMOID
    y.mul_(2)  # WRITE-SIGMOID
    return y


def save_then_write():
    x = torch.randn(3, requires_grad=True)
    y = checkpoint(scaled_sigmoid, x * 1, use_reentrant=True)  # CKPT-A
    y.sum().backward()


def test_a_write_in_the_recomputation_names_the_checkpoint_call():
    """The forward ran under no_grad (nothing saved, nothing raised); the recomputation
    saves sigmoid's output and overwrites it. Stock PyTorch's error names neither line."""
    c = _rejected_as_stock_does(save_then_write, "which is output 0 of Sigmoid, is at version 1")
    call = "y = checkpoint(scaled_sigmoid, x * 1, use_reentrant=True)"
    assert c.detail == ("SigmoidBackward0 needs f32[3] cpu v0->v1, saved at version 0; it is "
                        "now at version 1" + _recomputed(call, "CKPT-A"))
    assert c.fix == "write `y = y.mul(2)` instead of `y.mul_(2)`" + _again(call, "CKPT-A")
    assert c.write is not None and c.write.site is not None
    assert c.write.site.line == line_of("WRITE-SIGMOID")
    assert c.saved is not None and c.saved.site is not None
    assert c.saved.site.line == line_of("SAVE-SIGMOID")


def doubles_its_input(t):
    t.mul_(2)  # WRITE-INPUT
    return t.sin()


def test_the_leaf_error_raised_in_the_recomputation_names_the_checkpoint_call():
    """Recomputation hands the function detached inputs that require grad: writing one in
    place raises PyTorch's leaf error at backward, from a line the forward ran silently."""
    x = torch.randn(3, requires_grad=True)
    with gradguard.detect() as session:
        y = checkpoint(doubles_its_input, x * 1, use_reentrant=True)  # CKPT-LEAF
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad") as err:
            y.sum().backward()
    (c,) = session.conflicts
    call = "y = checkpoint(doubles_its_input, x * 1, use_reentrant=True)"
    assert c.kind == "leaf-inplace"
    assert c.detail == ("a leaf Variable that requires grad is being used in an in-place "
                        "operation" + _recomputed(call, "CKPT-LEAF"))
    assert c.fix.startswith("write `t = t.mul(2)` instead of `t.mul_(2)`; ")
    assert c.fix.endswith(_again(call, "CKPT-LEAF"))
    assert c.write is not None and c.write.site is not None
    assert c.write.site.line == line_of("WRITE-INPUT")
    assert c.summary() in "\n".join(err.value.__notes__)


BUF = torch.ones(3)


def counts_calls(t):
    with torch.no_grad():
        BUF.add_(1)  # WRITE-BUF
    return t * 2


def test_a_recomputation_writing_what_another_node_saved_breaks_the_second_backward():
    """The forward's write came before `y * BUF` saved BUF; the recomputation in the
    first backward writes it again, and the second backward through the retained graph
    finds it moved."""
    def program():
        x = torch.randn(3, requires_grad=True)
        y = checkpoint(counts_calls, x * 1, use_reentrant=True)  # CKPT-BUF
        loss = (y * BUF).sum()  # SAVE-BUF
        loss.backward(retain_graph=True)
        loss.backward()

    c = _rejected_as_stock_does(program, "is at version 2; expected version 1")
    call = "y = checkpoint(counts_calls, x * 1, use_reentrant=True)"
    assert c.detail.endswith(_recomputed(call, "CKPT-BUF"))
    assert c.fix == "write `BUF = BUF.add(1)` instead of `BUF.add_(1)`" + _again(call, "CKPT-BUF")
    assert c.write is not None and c.write.site is not None and c.saved is not None
    assert (c.write.site.line, c.saved.user_site.line) == (line_of("WRITE-BUF"),
                                                           line_of("SAVE-BUF"))
