"""The silent cases stock PyTorch misses, and PyTorch's other in-place errors explained."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
from helpers import line_of
from torch.utils.checkpoint import checkpoint

import gradguard

HERE = os.path.abspath(__file__)


class Disc(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))  # SAVE-disc


def test_data_write_is_reported_and_stock_pytorch_is_silent():
    x = torch.randn(5, 3, requires_grad=True)

    def program():
        y = torch.tanh(x)  # SAVE-data
        y.data.mul_(2)  # WRITE-data
        y.sum().backward()
        return x.grad.clone()

    stock = program()  # stock PyTorch: no error, wrong gradient
    x.grad = None
    with gradguard.detect(on_conflict="record") as s:
        program()
    (c,) = s.conflicts
    assert c.write.site.line == line_of("WRITE-data")
    assert c.saved.site.line == line_of("SAVE-data")
    assert c.write.alias == ".data"
    assert c.tensor.version_saved == c.tensor.version_now == 0
    assert "`.data`" in c.fix
    reference = 1 - torch.tanh(x.detach()) ** 2
    assert not torch.allclose(stock, reference)  # the silent corruption is real


def test_data_write_raises_in_raise_mode():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(gradguard.InplaceConflictError):
        with gradguard.detect():
            y = x.exp()
            y.data.zero_()
            y.sum().backward()


def test_data_write_to_other_bytes_is_not_a_conflict():
    a = torch.randn(2, 3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    with gradguard.detect() as s:
        b = a * 1
        y = b[0] * w
        b.data[1].zero_()  # other row, separate version counter: legal, harmless
        y.sum().backward()
    assert s.conflicts == []


def test_warn_mode_warns_at_the_users_line_and_continues():
    x = torch.randn(3, requires_grad=True)
    with pytest.warns(gradguard.InplaceConflictWarning, match="saved-tensor-mutated") as rec:
        with gradguard.detect(on_conflict="warn") as s:
            y = x.exp()
            y.data.zero_()  # WRITE-warn
            y.sum().backward()
    assert len(s.conflicts) == 1 and x.grad is not None
    assert rec[0].filename == HERE and rec[0].lineno == line_of("WRITE-warn")


def test_gan_step_before_generator_backward_names_step_and_parameter():
    torch.manual_seed(0)
    gen = nn.Linear(2, 4)
    disc = Disc()
    opt_d = torch.optim.Adam(disc.parameters(), lr=0.1)
    z = torch.randn(8, 2)
    with pytest.raises(gradguard.InplaceConflictError) as info:
        with gradguard.detect():
            fake = gen(z)
            loss_d = disc(fake.detach()).mean()
            loss_g = -disc(fake).mean()
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()  # WRITE-gan
            loss_g.backward()
    c = info.value.conflicts[0]
    assert c.write.site.file == HERE and c.write.site.line == line_of("WRITE-gan")
    assert c.write.via == "torch.optim"
    assert c.tensor.name in ("disc.fc.weight", "disc.fc.bias")
    assert c.fix.startswith("call `loss_g.backward()` before `opt_d.step()`")
    assert c.saved.site is not None


def test_numpy_view_write_needs_checksum():
    x = torch.randn(4, requires_grad=True)

    def program():
        y = x * 1
        z = y.exp()  # SAVE-numpy
        y.detach().numpy()[:] = 0.0  # bypasses the dispatcher entirely
        z.detach().numpy()[0] = 5.0
        z.sum().backward()

    with gradguard.detect(on_conflict="record") as plain:
        program()
    assert plain.conflicts == []  # documented: invisible without checksum
    x.grad = None
    with gradguard.detect(on_conflict="record", checksum=True) as s:
        program()
    (c,) = s.conflicts
    assert c.kind == "saved-tensor-mutated-outside-pytorch" and c.code == "GGR102"
    assert c.saved.site.line == line_of("SAVE-numpy")
    assert "outside PyTorch" in c.detail


def _checkpoint_program(through_data):
    lin = nn.Linear(3, 3)
    x0 = torch.randn(2, 3, requires_grad=True)

    def block(t):
        return torch.tanh(lin(t))

    def program():
        x = x0 * 1
        y = checkpoint(block, x, use_reentrant=False)  # SAVE-ckpt
        if through_data:
            x.data.add_(1.0)  # WRITE-ckpt-data
        else:
            with torch.no_grad():
                x.add_(1.0)  # WRITE-ckpt
        y.sum().backward()

    return program


def test_checkpoint_input_written_through_data_before_recompute():
    """Stock PyTorch recomputes silently from the new values here."""
    with gradguard.detect(on_conflict="record") as s:
        _checkpoint_program(through_data=True)()
    (c,) = s.conflicts
    assert c.kind == "checkpoint-input-mutated" and c.code == "GGR104"
    assert c.saved.site.line == line_of("SAVE-ckpt")
    assert c.write.site.line == line_of("WRITE-ckpt-data")
    assert c.write.alias == ".data"


def test_checkpoint_input_version_bump_is_rejected_like_stock():
    """Checkpoint saves its inputs for backward, so stock PyTorch rejects a versioned
    write; even in record mode gradguard must reject it too, naming both lines."""
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _checkpoint_program(through_data=False)()
    with pytest.raises(gradguard.InplaceConflictError) as info:
        with gradguard.detect(on_conflict="record"):
            _checkpoint_program(through_data=False)()
    c = info.value.conflicts[0]
    assert c.write.site.line == line_of("WRITE-ckpt")
    assert c.saved.site.line == line_of("SAVE-ckpt")


def test_checkpoint_without_writes_is_clean_and_exact():
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    y = checkpoint(lambda t: torch.tanh(lin(t)), x, use_reentrant=False)
    y.sum().backward()
    ref = x.grad.clone()
    x.grad = None
    with gradguard.detect() as s:
        y = checkpoint(lambda t: torch.tanh(lin(t)), x, use_reentrant=False)
        y.sum().backward()
    assert s.conflicts == [] and s.coverage_gaps == []
    assert torch.equal(ref, x.grad)


class ScaleKeepsCtx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.w = w  # keeps a tensor on ctx instead of save_for_backward
        return x * w

    @staticmethod
    def backward(ctx, g):
        return g * ctx.w, None


def test_ctx_attribute_written_before_backward():
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3)
    with gradguard.detect(on_conflict="record") as s:
        y = ScaleKeepsCtx.apply(x, w)  # SAVE-ctx
        w.mul_(3)  # WRITE-ctx
        y.sum().backward()
    (c,) = s.conflicts
    assert c.kind == "ctx-attribute-mutated" and c.code == "GGR103"
    assert "ScaleKeepsCtx" in c.saved.op
    assert c.write.site.line == line_of("WRITE-ctx")
    assert c.saved.site.line == line_of("SAVE-ctx")


def test_ctx_attribute_untouched_is_clean():
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3)
    with gradguard.detect() as s:
        ScaleKeepsCtx.apply(x, w).sum().backward()
    assert s.conflicts == [] and torch.equal(x.grad, w)


# -- PyTorch's own in-place errors, explained -----------------------------------------------

def _explained(fn):
    with gradguard.detect(on_conflict="record") as s:
        with pytest.raises(RuntimeError) as info:
            fn()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert not isinstance(info.value, gradguard.InplaceConflictError)  # PyTorch's own error
    return s.conflicts, str(info.value), notes


def test_leaf_inplace_seed_example():
    x = torch.randn(3, requires_grad=True)
    y = torch.randn(3)

    def seed():
        nonlocal x
        x += y  # WRITE-leaf

    conflicts, message, notes = _explained(seed)
    assert "a leaf Variable that requires grad" in message
    (c,) = conflicts
    assert c.kind == "leaf-inplace" and c.write.site.line == line_of("WRITE-leaf")
    assert "`x = x + y`" in c.fix
    assert "SUMMARY: gradguard: leaf-inplace" in notes


def test_leaf_view_inplace():
    x = torch.randn(3, 2, requires_grad=True)
    conflicts, message, notes = _explained(lambda: x[0].mul_(2))  # WRITE-leafview
    (c,) = conflicts
    assert c.kind == "leaf-view-inplace" and c.write.site.line == line_of("WRITE-leafview")
    assert "leaf-view-inplace" in notes


def test_multi_output_view_inplace():
    x = torch.randn(4, requires_grad=True)

    def fn():
        a, b = (x * 1).split(2)
        a.mul_(2)  # WRITE-split

    conflicts, message, notes = _explained(fn)
    (c,) = conflicts
    assert c.kind == "multi-output-view-inplace" and c.write.site.line == line_of("WRITE-split")
    assert "clone" in c.fix


def test_inference_tensor_inplace():
    with torch.inference_mode():
        t = torch.ones(3)

    conflicts, message, notes = _explained(lambda: t.add_(1))  # WRITE-inference
    (c,) = conflicts
    assert c.kind == "inference-tensor-inplace"
    assert c.write.site.line == line_of("WRITE-inference")


@pytest.mark.parametrize("make_opt, op", [
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=True), "torch._foreach_add_"),
    (lambda ps: torch.optim.Adam(ps, lr=0.1, foreach=True), "torch._foreach_"),
    (lambda ps: torch.optim.AdamW(ps, lr=0.1, fused=True), "torch._fused_adamw_"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, foreach=False), "Tensor.add_"),
])
def test_every_optimizer_implementation_is_intercepted(make_opt, op):
    disc = Disc()
    opt_d = make_opt(disc.parameters())
    x = torch.randn(8, 4, requires_grad=True)
    with pytest.raises(gradguard.InplaceConflictError) as info:
        with gradguard.detect():
            loss = disc(x).mean()
            disc(torch.randn(8, 4)).mean().backward()
            opt_d.step()  # WRITE-opt
            loss.backward()
    c = info.value.conflicts[0]
    assert c.write.op.startswith(op), c.write.op
    assert c.write.site.line == line_of("WRITE-opt") and c.write.via == "torch.optim"
    assert c.tensor.name.startswith("disc.fc.")


def test_data_assignment_on_a_saved_parameter_is_reported():
    lin = nn.Linear(3, 1)
    x = torch.randn(4, 3, requires_grad=True)
    with gradguard.detect(on_conflict="record") as s:
        # mul saves the weight itself (a leaf: the very tensor, not a view)
        y = (lin.weight * x).sum()  # SAVE-dataset
        lin.weight.data = torch.zeros(1, 3)  # WRITE-dataset
        y.backward()
    (c,) = s.conflicts
    assert c.write.op == "Tensor.data (assignment)"
    assert c.write.site.line == line_of("WRITE-dataset")
    assert c.saved.site.line == line_of("SAVE-dataset")
    assert c.tensor.name == "lin.weight" and c.tensor.is_parameter


def test_data_assignment_leaves_saved_views_intact_and_is_not_flagged():
    """WGAN-style clipping `p.data = p.data.clamp(...)` while a graph saved `p.t()`: the
    saved view still points at the old bytes, so the gradient is right; no report."""
    lin = nn.Linear(3, 1)
    x = torch.randn(4, 3)
    with gradguard.detect() as s:
        loss = lin(x).sum()  # addmm saves weight.t(), a view
        lin.weight.data = lin.weight.data.clamp(-0.01, 0.01)
        loss.backward()
    assert s.conflicts == []
    assert torch.allclose(lin.weight.grad, x.sum(0, keepdim=True))


def test_fused_adam_step_is_silent_in_stock_pytorch_and_reported():
    """`fused=True` optimizers write parameters without bumping their version counters:
    stock PyTorch then backprops the GAN-ordering bug through the *new* weights."""

    def gan_step():
        torch.manual_seed(0)
        disc = Disc()
        opt_d = torch.optim.AdamW(disc.parameters(), lr=0.1, fused=True)
        x = torch.randn(8, 4, requires_grad=True)
        loss_g = disc(x).mean()
        disc(torch.randn(8, 4)).mean().backward()
        opt_d.step()  # WRITE-fused
        loss_g.backward()
        return disc

    disc = gan_step()  # stock: no error at all
    assert disc.fc.weight._version == 1  # the step did not count as a write
    with gradguard.detect(on_conflict="record") as s:
        gan_step()
    (c,) = [c for c in s.conflicts if c.tensor.name == "disc.fc.weight"]
    assert c.write.op == "torch._fused_adamw_" and c.write.site.line == line_of("WRITE-fused")
    assert c.tensor.version_saved == c.tensor.version_now
    assert "silently wrong" in c.detail
