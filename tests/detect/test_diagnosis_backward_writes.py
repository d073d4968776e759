"""Writes during backward: a custom Function's backward (or a hook) that writes in place
into a tensor another node saved. The report names the backward that wrote (its line, and
which node's backward it was); protect() hands every node the saved bytes, also through a
second backward over a retained graph."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import line_of

import gradguard

HERE = __file__


class Square(torch.autograd.Function):
    """x * x, whose backward reuses its saved input as a scratch buffer (2 * x)."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        x.mul_(2)  # BACKWARD-WRITE
        return grad * x

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x


def _program(retain: bool) -> torch.Tensor:
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = w * 1
    a = h.sin()  # SAVE-SIN
    b = Square.apply(h)
    loss = (a + b).sum()
    loss.backward(retain_graph=retain)
    if retain:
        loss.backward()  # SECOND
    assert w.grad is not None
    return w.grad


def _reference(retain: bool) -> torch.Tensor:
    """The program with the backward's write made on a clone."""
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = w * 1
    loss = (h.sin() + h.clone() * h.clone()).sum()
    loss.backward(retain_graph=retain)
    if retain:
        loss.backward()
    assert w.grad is not None
    return w.grad


DURING = ("; the write ran during backward, in the backward of SquareBackward (its "
          "Function's backward or a hook on it), while other nodes, and any later backward "
          "through a retained graph (retain_graph=True), still need the saved bytes")
FIX = ("write `x = x.mul(2)` instead of `x.mul_(2)` in that backward (a backward may only "
       "write tensors it allocated itself; `.clone()` one it was handed before writing it)")


def test_stock_pytorch_rejects_the_program():
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _program(retain=False)


def test_detect_names_the_backward_that_wrote():
    with gradguard.detect(on_conflict="record") as session:
        with pytest.raises(gradguard.InplaceConflictError):
            _program(retain=False)
    (c,) = session.conflicts
    assert c.kind == "saved-tensor-mutated"
    assert c.detail == ("SinBackward0 needs f32[3] cpu v0->v1, saved at version 0; it is now at "
                        "version 1" + DURING)
    assert c.fix == FIX
    assert c.write is not None and c.write.site is not None
    assert (c.write.site.line, c.write.site.function) == (line_of("BACKWARD-WRITE"),
                                                         "Square.backward")
    assert c.saved is not None and c.saved.user_site is not None
    assert c.saved.user_site.line == line_of("SAVE-SIN")
    assert c.summary() == (f"saved-tensor-mutated {HERE}:{line_of('BACKWARD-WRITE')} in "
                           "Square.backward (Tensor.mul_)")


def test_a_hook_writing_a_saved_tensor_is_named_with_its_node():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    with gradguard.detect(on_conflict="record") as session:
        h = w * 1
        a = h.exp()  # SAVE-EXP
        g = w * 3
        g.register_hook(lambda grad: a.data.zero_())  # HOOK-WRITE
        (a + g).sum().backward()
    (c,) = session.conflicts
    assert c.write is not None and c.write.site is not None
    assert c.write.site.line == line_of("HOOK-WRITE")
    assert c.write.alias == ".data"
    assert "; the write ran during backward, in the backward of MulBackward0 (its" in c.detail
    assert "gradient is silently wrong" in c.detail


@pytest.mark.parametrize(("retain", "nodes"), [
    (False, {"SinBackward0"}),  # Square's backward ran first, on the live tensor
    (True, {"SinBackward0", "SquareBackward"}),  # the second backward: both got the copy
])
def test_protect_gives_every_backward_the_saved_bytes(retain, nodes):
    expected = _reference(retain)
    with gradguard.protect() as session:
        grad = _program(retain)
    assert torch.equal(grad, expected)
    assert {c.saved.node for c in session.conflicts if c.saved} == nodes
    assert all(c.repaired and c.fix == FIX for c in session.conflicts)


SCRIPT = """\
import sys
sys.path.insert(0, {here!r})
from test_diagnosis_backward_writes import _program
print(_program(retain=True).tolist())
"""


def test_run_mode_protect_repairs_the_second_backward(tmp_path, capsys):
    from gradguard._cli.main import main

    script = tmp_path / "backward_write.py"
    script.write_text(SCRIPT.format(here=str(Path(HERE).parent)))
    assert main(["run", "--mode", "protect", str(script)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{_reference(retain=True).tolist()}\n"
    assert "repaired: gradguard.protect kept the saved bytes" in err
    assert (f"WRITE Tensor.mul_\n    #0 {HERE}:{line_of('BACKWARD-WRITE')} in Square.backward\n"
            in err)
