"""Every write category: the conflict names the exact write line and save line."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import line_of

import gradguard

HERE = os.path.abspath(__file__)


def run_raise(fn):
    """Run fn under detect(raise); return the single conflict it raised."""
    with pytest.raises(gradguard.InplaceConflictError) as info:
        with gradguard.detect():
            fn()
    assert isinstance(info.value, RuntimeError)
    assert len(info.value.conflicts) == 1
    return info.value.conflicts[0], str(info.value)


def check_sites(c, write_marker, save_marker, op=None):
    assert c.write is not None, c
    assert c.write.site.file == HERE
    assert c.write.site.line == line_of(write_marker), c.write.stack
    assert c.saved.site.file == HERE
    assert c.saved.site.line == line_of(save_marker), c.saved.stack
    if op is not None:
        assert c.write.op == op


def test_inplace_method_after_sigmoid():
    x = torch.randn(4, 3, requires_grad=True)

    def step():
        h = torch.sigmoid(x)  # SAVE-sigmoid
        h.relu_()  # WRITE-relu
        h.sum().backward()

    c, message = run_raise(step)
    check_sites(c, "WRITE-relu", "SAVE-sigmoid", "Tensor.relu_")
    assert c.kind == "saved-tensor-mutated" and c.code == "GGR101"
    assert c.saved.node == "SigmoidBackward0" and c.saved.op == "sigmoid"
    assert c.tensor.version_saved == 0 and c.tensor.version_now == 1
    assert c.tensor.shape == (4, 3) and c.tensor.dtype == "torch.float32"
    assert c.overlap is True
    assert c.fix == "write `h = h.relu()` instead of `h.relu_()`"
    # Stock PyTorch's sentence stays greppable, and the SUMMARY line is there.
    assert "modified by an inplace operation" in message
    assert f"SUMMARY: gradguard: saved-tensor-mutated {HERE}:{line_of('WRITE-relu')}" in message


def test_residual_augmented_assignment():
    x = torch.randn(4, 3, requires_grad=True)
    skip = torch.randn(4, 3)

    def step():
        h = torch.tanh(x)  # SAVE-tanh
        h += skip  # WRITE-iadd
        h.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-iadd", "SAVE-tanh", "+=")
    assert c.fix == "write `h = h + skip` instead of `h += skip`"


def test_setitem_after_saving_op():
    x0 = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(3, 3, requires_grad=True)

    def step():
        x = x0 * 1
        y = x @ w  # SAVE-mm
        x[:, 0] = 0  # WRITE-setitem
        y.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-setitem", "SAVE-mm", "Tensor.__setitem__")
    assert "x = x.clone()" in c.fix


def test_out_argument_write():
    w = torch.randn(4, requires_grad=True)
    m = torch.rand(4)

    def step():
        y = w * m  # SAVE-mul
        torch.add(m, 1, out=m)  # WRITE-out
        y.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-out", "SAVE-mul", "torch.add(out=)")
    assert "out=" in c.fix


@pytest.mark.parametrize("kind", ["copy_", "masked_fill_", "scatter_", "index_put_", "fill_"])
def test_other_inplace_methods(kind):
    w = torch.randn(4, requires_grad=True)
    m = torch.rand(4)

    def write(t):
        if kind == "copy_":
            t.copy_(torch.zeros(4))
        elif kind == "masked_fill_":
            t.masked_fill_(t > 0.5, 0.0)
        elif kind == "scatter_":
            t.scatter_(0, torch.tensor([1]), torch.tensor([9.0]))
        elif kind == "index_put_":
            t.index_put_((torch.tensor([2]),), torch.tensor([7.0]))
        else:
            t.fill_(3.0)

    def step():
        y = w * m  # SAVE-generic
        write(m)
        y.sum().backward()

    c, _ = run_raise(step)
    assert c.write.op == f"Tensor.{kind}"
    assert c.saved.site.line == line_of("SAVE-generic")
    # The write happened inside the helper `write`; its line is the innermost user frame.
    assert c.write.site.function.endswith("write")
    assert c.write.stack[1].function.endswith("step")


def test_set_counts_as_a_write():
    w = torch.randn(4, requires_grad=True)
    m = torch.rand(4)

    def step():
        y = w * m  # SAVE-set
        m.set_(torch.zeros(4))  # WRITE-set
        y.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-set", "SAVE-set", "Tensor.set_")


def test_functional_inplace_relu_after_sigmoid():
    x = torch.randn(4, 3, requires_grad=True)

    def step():
        h = torch.sigmoid(x)  # SAVE-F
        h = F.relu(h, inplace=True)  # WRITE-F
        h.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-F", "SAVE-F", "torch.relu_")
    assert "inplace=True" in c.fix


class SigmoidThenInplaceReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))  # SAVE-module
        return self.act(h)  # WRITE-module


def test_relu_inplace_module_after_sigmoid():
    net = SigmoidThenInplaceReLU()
    x = torch.randn(2, 3)

    c, _ = run_raise(lambda: net(x).sum().backward())
    check_sites(c, "WRITE-module", "SAVE-module", "torch.relu_")
    assert "inplace=True" in c.fix


def test_dropout_inplace_after_exp():
    x = torch.randn(4, 3, requires_grad=True)

    def step():
        h = x.exp()  # SAVE-exp
        F.dropout(h, 0.5, training=True, inplace=True)  # WRITE-dropout
        h.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-dropout", "SAVE-exp", "torch.dropout_")


def test_write_through_view_of_saved_tensor():
    x = torch.randn(4, 3, requires_grad=True)

    def step():
        h = x.exp()  # SAVE-viewwrite
        h[0].zero_()  # WRITE-viewwrite
        h.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-viewwrite", "SAVE-viewwrite", "Tensor.zero_")
    assert c.overlap is True


def test_write_into_base_of_saved_view():
    a = torch.tensor([[1.0, 2, 3], [4, 5, 6]], requires_grad=True)

    def step():
        b = a * 1
        v = b[1]
        y = v * v  # SAVE-baseview
        b.zero_()  # WRITE-baseview
        y.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-baseview", "SAVE-baseview", "Tensor.zero_")
    assert c.overlap is True
    assert c.aliasing["saved_bytes"] == [12, 24]


def test_write_through_detach():
    x = torch.randn(3, requires_grad=True)

    def step():
        h = x.exp()  # SAVE-detach
        h.detach().mul_(2)  # WRITE-detach
        h.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-detach", "SAVE-detach", "Tensor.mul_")


def test_non_overlapping_write_same_storage_still_rejected():
    """Views share one version counter, so stock PyTorch rejects this; so do we, marked
    as not overlapping."""
    a = torch.randn(2, 3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)

    def step():
        b = a * 1
        y = b[0] * w  # SAVE-nonoverlap
        b[1].zero_()  # WRITE-nonoverlap
        y.sum().backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-nonoverlap", "SAVE-nonoverlap", "Tensor.zero_")
    assert c.overlap is False
    assert c.aliasing["written_bytes"] == [12, 24] and c.aliasing["saved_bytes"] == [0, 12]


def test_strided_column_writes_are_exact():
    """Columns interleave in memory: byte intervals overlap, elements do not."""
    a = torch.randn(3, 2, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    with gradguard.detect(on_conflict="record") as s:
        b = a * 1
        y = b[:, 0] * w
        b.data[:, 1].zero_()  # different column, own version counter: harmless
        y.sum().backward()
    assert s.conflicts == []
    expected = w.detach() * 0 + 1
    assert torch.equal(a.grad[:, 0], w.detach()) and torch.equal(a.grad[:, 1], expected * 0)


def test_cxx_internal_write_is_still_rejected():
    """A write gradguard does not intercept (here: a raw aten op) still fails at backward,
    exactly like stock PyTorch, with the save site named."""
    x = torch.randn(3, requires_grad=True)

    def step():
        h = x.exp()  # SAVE-cxx
        torch.ops.aten.mul_.Scalar(h, 2.0)
        h.sum().backward()

    c, message = run_raise(step)
    assert c.write is None
    assert c.saved.site.line == line_of("SAVE-cxx")
    assert "not intercepted" in c.fix
    assert "is at version 1; expected version 0" in message


def test_embedding_max_norm_renorms_a_saved_weight():
    w = torch.randn(10, 3, requires_grad=True)
    idx = torch.tensor([1, 2])

    def step():
        weight = w * 1
        y = weight * 2  # harmless: mul by scalar saves nothing of weight
        z = (weight * weight).sum()  # SAVE-emb
        F.embedding(idx, weight.detach(), max_norm=0.1)  # WRITE-emb
        (z + y.sum()).backward()

    c, _ = run_raise(step)
    check_sites(c, "WRITE-emb", "SAVE-emb", "torch.embedding_renorm_")


def test_eager_mode_stops_at_the_write_before_data_is_lost():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(gradguard.InplaceConflictError) as info:
        with gradguard.detect(when="write"):
            h = x.exp()  # SAVE-eager
            before = h.detach().clone()
            h.mul_(2)  # WRITE-eager
    c = info.value.conflicts[0]
    assert c.write.site.line == line_of("WRITE-eager")
    assert c.saved.site.line == line_of("SAVE-eager")
    assert torch.equal(h.detach(), before), "the write must not have happened"
