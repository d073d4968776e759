"""gradguard.protect(): copy-on-write gives the gradients of the snapshot reference.

The reference is the same program with every saved tensor copied at save time
(`snapshot_saved_tensors`), which no write can corrupt. Every write category of the
detect tests is run three ways: stock PyTorch (which must raise or be wrong, or the case
proves nothing), the reference, and protect(), which must match the reference bit for bit
and copy only what the write overlapped.
"""
from __future__ import annotations

import contextlib
import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import line_of
from torch.utils.checkpoint import checkpoint

import gradguard
from gradguard._core.runtime import runtime
from gradguard._core.snapshot import snapshot_saved_tensors


def _leaf(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_()


# -- the write categories: each returns the gradients it computed ----------------------------

def method_after_tanh():
    x = _leaf(4, 3)
    h = torch.tanh(x)
    h.mul_(2)
    (h * h).sum().backward()
    return (x.grad,)


def augmented_assignment():
    x = _leaf(4, 3)
    h = torch.tanh(x)
    h += torch.ones(4, 3)
    h.sum().backward()
    return (x.grad,)


def setitem_into_saved_input():
    x0, w = _leaf(4, 3), _leaf(3, 3, seed=1)
    x = x0 * 1
    y = x @ w
    x[:, 0] = 0
    y.sum().backward()
    return x0.grad, w.grad


def out_argument():
    w, m = _leaf(4), torch.rand(4, generator=torch.Generator().manual_seed(2))
    y = w * m
    torch.add(m, 1, out=m)
    y.sum().backward()
    return (w.grad,)


def _write_into_factor(write):
    def program():
        w = _leaf(4)
        m = torch.rand(4, generator=torch.Generator().manual_seed(3))
        y = w * m
        write(m)
        y.sum().backward()
        return (w.grad,)

    program.__name__ = write.__name__
    return program


def copy_(t):
    t.copy_(torch.zeros(4))


def masked_fill_(t):
    t.masked_fill_(t > 0.5, 0.0)


def scatter_(t):
    t.scatter_(0, torch.tensor([1]), torch.tensor([9.0]))


def index_put_(t):
    t.index_put_((torch.tensor([2]),), torch.tensor([7.0]))


def set_(t):
    t.set_(torch.zeros(4))


def functional_relu_inplace():
    x = _leaf(4, 3)
    h = torch.tanh(x)
    F.relu(h, inplace=True)
    h.sum().backward()
    return (x.grad,)


def relu_inplace_module():
    x = _leaf(4, 3)
    net = nn.Sequential(nn.Tanh(), nn.ReLU(inplace=True))
    net(x).sum().backward()
    return (x.grad,)


def dropout_inplace():
    torch.manual_seed(5)
    x = _leaf(4, 3)
    h = x.exp()
    F.dropout(h, p=0.5, training=True, inplace=True)
    h.sum().backward()
    return (x.grad,)


def embedding_renorm():
    w = _leaf(10, 3)
    weight = w * 1
    z = (weight * weight).sum()
    F.embedding(torch.tensor([1, 2]), weight.detach(), max_norm=0.1)
    z.backward()
    return (w.grad,)


def write_through_view():
    x = _leaf(4, 3)
    h = x.exp()
    h[1].zero_()
    h.sum().backward()
    return (x.grad,)


def write_into_base_of_saved_view():
    a = _leaf(2, 3)
    b = a * 1
    v = b[1]
    y = (v * v).sum()
    b.zero_()
    y.backward()
    return (a.grad,)


def write_into_view_of_saved_base():
    a = _leaf(2, 3)
    b = a * 1
    y = (b * b).sum()
    b[1].zero_()
    y.backward()
    return (a.grad,)


def write_through_detach():
    x = _leaf(4, 3)
    h = x.sigmoid()
    h.detach().mul_(3)
    h.sum().backward()
    return (x.grad,)


def write_through_data():
    x = _leaf(4, 3)
    h = torch.tanh(x)
    h.data.mul_(2)
    h.sum().backward()
    return (x.grad,)


def data_assignment_on_saved_parameter():
    torch.manual_seed(6)
    lin = nn.Linear(3, 1)
    x = _leaf(4, 3)
    y = (lin.weight * x).sum()  # mul saves the weight itself
    lin.weight.data = torch.zeros(1, 3)
    y.backward()
    return x.grad, lin.weight.grad


def _optimizer_between_forward_and_backward(make_opt):
    def program():
        torch.manual_seed(7)
        disc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        opt = make_opt(disc.parameters())
        x = _leaf(8, 4)
        loss_g = disc(x).mean()
        disc(torch.randn(8, 4)).mean().backward()
        opt.step()  # the GAN ordering bug: updates weights loss_g's graph saved
        loss_g.backward()
        return (x.grad,)

    return program


class ScaleKeepsCtx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.w = w  # a tensor on ctx instead of save_for_backward: PyTorch never checks it
        return x * w

    @staticmethod
    def backward(ctx, g):
        return g * ctx.w, None


def ctx_attribute():
    x, w = _leaf(3), torch.arange(1.0, 4.0)
    y = ScaleKeepsCtx.apply(x, w)
    w.mul_(3)
    y.sum().backward()
    return (x.grad,)


def checkpoint_input_through_data():
    torch.manual_seed(8)
    lin = nn.Linear(3, 3)
    x0 = _leaf(2, 3)
    x = x0 * 1
    y = checkpoint(lambda t: torch.tanh(lin(t)), x, use_reentrant=False)
    x.data.add_(1.0)  # recomputation would silently use the new values
    y.sum().backward()
    return x0.grad, lin.weight.grad


CASES = [
    method_after_tanh, augmented_assignment, setitem_into_saved_input, out_argument,
    *[_write_into_factor(w) for w in (copy_, masked_fill_, scatter_, index_put_, set_)],
    functional_relu_inplace, relu_inplace_module, dropout_inplace, embedding_renorm,
    write_through_view, write_into_base_of_saved_view, write_into_view_of_saved_base,
    write_through_detach, write_through_data, data_assignment_on_saved_parameter,
    checkpoint_input_through_data,
]
OPTIMIZERS = {
    "sgd_foreach": lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9, foreach=True),
    "adam_for_loop": lambda ps: torch.optim.Adam(ps, lr=0.5, foreach=False),
    "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=0.5, fused=True),
}
for _name, _make in OPTIMIZERS.items():
    _program = _optimizer_between_forward_and_backward(_make)
    _program.__name__ = f"optimizer_step_{_name}"
    CASES.append(_program)


def run(program, ctx):
    with ctx:
        return program()


@pytest.mark.parametrize("program", CASES, ids=lambda p: p.__name__)
def test_protect_matches_the_snapshot_reference(program):
    reference = run(program, snapshot_saved_tensors())
    try:
        stock = run(program, contextlib.nullcontext())
    except RuntimeError as exc:  # stock PyTorch rejects it ...
        assert "modified by an inplace operation" in str(exc)
    else:  # ... or silently computes something else
        assert not all(torch.equal(a, b) for a, b in zip(stock, reference)), \
            "this case is not a conflict in stock PyTorch: it proves nothing"

    with gradguard.protect() as session:
        got = program()
    for a, b in zip(got, reference):
        assert torch.equal(a, b)
    assert session.copies >= 1 and session.copied_bytes > 0
    assert session.conflicts and all(c.repaired for c in session.conflicts)
    assert "repaired: gradguard.protect kept the saved bytes" in session.report()


def test_the_view_cases_allow_mutation_on_saved_tensors_gets_wrong():
    """The issue's two measurements on torch 2.13: PyTorch's own copy-on-write context
    returns wrong gradients when a view and its base are involved; protect() does not."""
    for program in (write_into_base_of_saved_view, write_into_view_of_saved_base):
        reference = run(program, snapshot_saved_tensors())[0]
        with torch.autograd.graph.allow_mutation_on_saved_tensors():
            theirs = program()[0]
        with gradguard.protect():
            ours = program()[0]
        assert torch.equal(ours, reference)
        assert not torch.equal(theirs, reference), "fixed upstream? update the README claim"


def test_ctx_attribute_is_put_back_from_the_copy():
    """Tensors kept on ctx are not saved tensors, so the snapshot reference does not cover
    them; the gradient the program means is the one with `w` as it was in forward."""
    stock = ctx_attribute()
    assert torch.equal(stock[0], torch.arange(1.0, 4.0) * 3)  # silently wrong
    with gradguard.protect() as session:
        got = ctx_attribute()
    assert torch.equal(got[0], torch.arange(1.0, 4.0))
    (c,) = session.conflicts
    assert c.kind == "ctx-attribute-mutated" and c.repaired
    assert session.copied_bytes == 3 * 4


def test_write_elsewhere_in_the_storage_copies_nothing():
    """A large activation of which a small slice is saved and another slice written:
    nothing to copy, and backward is correct (stock PyTorch rejects it: the shared
    version counter moved)."""
    def program():
        act = torch.randn(256, 64, generator=torch.Generator().manual_seed(9))
        w = _leaf(64)
        y = (act[:16] * w).sum()  # saves the slice act[:16]
        act[16:].zero_()
        y.backward()
        return (w.grad,)

    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        program()
    reference = run(program, snapshot_saved_tensors())
    with gradguard.protect() as session:
        got = program()
    assert torch.equal(got[0], reference[0])
    assert session.copies == 0 and session.copied_bytes == 0 and session.conflicts == []


def test_copies_once_per_saved_version_and_only_the_saved_bytes():
    x = _leaf(64, 32)
    with gradguard.protect() as session:
        h = torch.tanh(x)  # SAVE-twice
        h.mul_(2)  # WRITE-first
        h.add_(1)
        h[0].zero_()
        (h * 1).sum().backward()
    assert session.copies == 1
    assert session.copied_bytes == 64 * 32 * 4  # the saved tensor, once
    (site,) = session.copy_sites
    assert site.write.line == line_of("WRITE-first") and site.saved.line == line_of("SAVE-twice")
    assert site.op == "Tensor.mul_" and site.count == 1 and site.bytes == session.copied_bytes


def test_two_records_of_one_view_share_one_copy():
    x = _leaf(8, 8)
    with gradguard.protect() as session:
        h = torch.tanh(x)
        y = (h * h).sum()  # mul saves h twice
        h.zero_()
        y.backward()
    assert session.copies == 1 and session.copied_bytes == 8 * 8 * 4


def test_a_saved_base_and_its_saved_view_share_one_copy():
    """softmax saves its whole output, a later op saves a slice of it; a write into the
    slice copies the base once and serves the slice from that copy."""
    reference = None
    for ctx in (snapshot_saved_tensors(), gradguard.protect()):
        x = _leaf(16, 8)
        with ctx as session:
            probs = torch.softmax(x, dim=-1)
            y = (probs[4:] * probs[4:]).sum() + probs[:4].sum()
            probs[4:6].zero_()
            y.backward()
        if reference is None:
            reference = x.grad
    assert torch.equal(x.grad, reference)
    assert session.copies == 1 and session.copied_bytes == 16 * 8 * 4
    (site,) = session.copy_sites


def test_backward_after_the_block_uses_the_copy():
    reference = run(method_after_tanh, snapshot_saved_tensors())
    x = _leaf(4, 3)
    with gradguard.protect() as session:
        h = torch.tanh(x)
        h.mul_(2)
        loss = (h * h).sum()
    loss.backward()
    assert torch.equal(x.grad, reference[0])
    assert session.conflicts[0].repaired


def test_the_copy_dies_with_the_graph():
    """Freed by reference counting as soon as backward releases the saved tensor: no
    reference cycle (through frames, closures or hooks) may keep a copy alive until the
    next garbage collection, or every step would hold its copies for a while."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            x = _leaf(4, 3)
            with gradguard.protect() as session:
                h = torch.tanh(x)
                h.mul_(2)
                copies = [r.extra.copy for r in runtime.registry.records()
                          if r.extra is not None and r.extra.copy is not None]
                (copy,) = {id(c): c for c in copies}.values()
                del copies
                ref = weakref.ref(copy)
                del copy
                h.sum().backward()
            assert session.conflicts[0].repaired
            assert ref() is None
            del h
            assert len(runtime.registry) == 0
    finally:
        gc.enable()


def test_nested_protect_counts_in_both_and_reports_to_the_outer():
    x = _leaf(4, 3)
    with gradguard.protect() as outer:
        with gradguard.protect() as inner:
            h = torch.tanh(x)
            h.mul_(2)
            h.sum().backward()
    assert inner.copies == outer.copies == 1
    assert inner.copied_bytes == outer.copied_bytes == 48
    assert len(outer.conflicts) == 1 and outer.conflicts[0].repaired


@pytest.mark.parametrize("protect_outside", [True, False])
def test_detect_reports_what_protect_repairs(protect_outside):
    """Combined either way round, the default raise-mode detect does not raise: the
    conflict is reported, marked repaired, and the gradient is the reference's."""
    reference = run(method_after_tanh, snapshot_saved_tensors())
    first, second = ((gradguard.protect(), gradguard.detect()) if protect_outside
                     else (gradguard.detect(), gradguard.protect()))
    with first, second:
        got = method_after_tanh()
    detector = second if protect_outside else first
    assert torch.equal(got[0], reference[0])
    (c,) = detector.conflicts
    assert c.repaired and c.kind == "saved-tensor-mutated"
    assert c.to_dict()["repaired"] is True
    assert "repaired" in detector.report()


def test_a_write_protect_cannot_see_is_still_rejected():
    x = _leaf(3)
    with pytest.raises(gradguard.InplaceConflictError, match="modified by an inplace"):
        with gradguard.protect() as session:
            h = x.exp()
            torch.ops.aten.mul_.Scalar(h, 2.0)  # raw aten op: not intercepted
            h.mul_(2)  # intercepted, but the copy would already hold wrong bytes
            h.sum().backward()
    assert not session.conflicts[0].repaired


def test_leaf_and_multi_output_view_writes_still_raise_with_the_explanation():
    w = _leaf(3)
    with gradguard.protect() as session:
        with pytest.raises(RuntimeError, match="leaf Variable") as info:
            y = (w * w).sum()
            w.mul_(2)
    assert "GGR201" in "\n".join(info.value.__notes__)
    assert session.copies == 0  # the failed write's copy was undone
    del y
    x = _leaf(4, 2)
    with gradguard.protect():
        with pytest.raises(RuntimeError, match="multiple views") as info:
            a, b = (x * 1).split(2)
            a.mul_(2)
    assert "GGR203" in "\n".join(info.value.__notes__)


def test_save_on_cpu_inside_protect_is_a_coverage_gap():
    """save_on_cpu's hooks replace ours while active. On CPU tensors it keeps the tensor
    itself (no copy) and PyTorch skips its version check under hooks, so stock PyTorch is
    silently wrong here; gradguard cannot repair it and says so."""
    reference = run(method_after_tanh, snapshot_saved_tensors())
    with gradguard.protect() as session:
        with torch.autograd.graph.save_on_cpu():
            got = method_after_tanh()
    assert not torch.equal(got[0], reference[0])
    (gap,) = session.coverage_gaps
    assert "save_on_cpu" in gap and "not checked" in gap and "CPU tensors" in gap
    assert session.copies == 0


def test_user_saved_tensor_hooks_inside_protect_are_a_coverage_gap():
    """Any saved-tensor hooks entered inside protect() replace its hooks while active: what
    they pack is theirs to keep safe. Hooks that copy (like these) stay correct; the gap is
    reported either way."""
    class CopyingHooks(torch.autograd.graph.saved_tensors_hooks):
        def __init__(self):
            super().__init__(lambda t: t.detach().clone(), lambda t: t)

    reference = run(method_after_tanh, snapshot_saved_tensors())
    with gradguard.protect() as session:
        with CopyingHooks():
            got = method_after_tanh()
    assert torch.equal(got[0], reference[0])
    (gap,) = session.coverage_gaps
    assert "CopyingHooks" in gap and "not checked" in gap
    assert session.copies == 0 and session.conflicts == []


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_with_a_versioned_input_write_is_repaired(reentrant):
    """Both checkpoint implementations save their inputs through our hooks, so a versioned
    write to one (which stock PyTorch rejects) is repaired like any saved tensor, and the
    recomputation runs from the copy."""
    def program():
        torch.manual_seed(8)
        lin = nn.Linear(3, 3)
        x0 = _leaf(2, 3)
        x = x0 * 1
        y = checkpoint(lambda t: torch.tanh(lin(t)), x, use_reentrant=reentrant)
        with torch.no_grad():
            x.add_(1.0)
        y.sum().backward()
        return x0.grad, lin.weight.grad

    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        program()
    reference = run(program, snapshot_saved_tensors())
    with gradguard.protect() as session:
        got = program()
    assert all(torch.equal(a, b) for a, b in zip(got, reference))
    assert session.conflicts[0].kind == "checkpoint-input-mutated"


def test_a_correct_training_step_is_bit_identical():
    def train(ctx):
        torch.manual_seed(10)
        net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(inplace=True), nn.Linear(16, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        x = torch.randn(32, 6)
        with ctx:
            for _ in range(3):
                opt.zero_grad()
                loss = (net(x) ** 2).mean()
                loss.backward()
                opt.step()
        return [p.detach().clone() for p in net.parameters()]

    plain = train(contextlib.nullcontext())
    session = gradguard.protect()
    protected = train(session)
    assert all(torch.equal(a, b) for a, b in zip(plain, protected))
    assert session.copies == 0 and session.conflicts == []
