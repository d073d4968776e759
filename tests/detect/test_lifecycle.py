"""Legal in-place use, exact gradients, record lifetime, threads, nesting, other hooks."""
from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import gradguard
from gradguard._core import intercept
from gradguard._core.runtime import runtime


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 4 * 4, 2),
    )


def _train_steps(model, opt, x, y, steps=2):
    grads = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
    return grads


def test_legal_inplace_training_is_clean_and_bit_identical():
    """ReLU(inplace=True) after conv/batchnorm, step after backward, init under no_grad."""
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    plain = _conv_net()
    with torch.no_grad():
        plain[0].weight.normal_(0, 0.1)
    ref = _train_steps(plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9), x, y)

    guarded = _conv_net()
    with gradguard.detect() as s:
        with torch.no_grad():
            guarded[0].weight.normal_(0, 0.1)  # same seed state as above: same values
        got = _train_steps(guarded, torch.optim.SGD(guarded.parameters(), lr=0.1, momentum=0.9),
                           x, y)
    assert s.conflicts == []
    for a, b in zip(ref, got):
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    for p, q in zip(plain.parameters(), guarded.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(plain[1].running_mean, guarded[1].running_mean)


def test_write_into_fresh_clone_is_legal():
    x = torch.randn(3, requires_grad=True)
    with gradguard.detect() as s:
        h = x.exp()
        h2 = h.clone()
        h2.mul_(2)
        h2[0] = 0
        (h * h2).sum().backward()
    assert s.conflicts == []


def test_batchnorm_applied_twice_in_one_forward():
    """The second call updates running stats the first call saved; training-mode backward
    never reads them, and stock PyTorch accepts it."""
    bn = nn.BatchNorm1d(4)
    x = torch.randn(8, 4, requires_grad=True)
    with gradguard.detect() as s:
        bn(bn(x)).sum().backward()
    assert s.conflicts == []


def test_validation_forward_without_no_grad_then_step():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 1))
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(4, 3)
    with gradguard.detect() as s:
        for _ in range(3):
            model(x).sum().backward()
            val = model(x).mean()  # graph built, never backwarded
            opt.step()
            opt.zero_grad()
            float(val.detach())
    assert s.conflicts == []


def test_retain_graph_then_step_without_second_backward():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradguard.detect() as s:
        loss = model(torch.randn(4, 3)).sum()
        loss.backward(retain_graph=True)
        opt.step()
        del loss
    assert s.conflicts == []


def test_retain_graph_then_step_then_second_backward_is_caught():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(gradguard.InplaceConflictError, match="opt.step"):
        with gradguard.detect():
            loss = model(torch.randn(4, 3)).sum()
            loss.backward(retain_graph=True)
            opt.step()
            loss.backward()


def test_records_vanish_after_backward_and_when_graph_dropped():
    gc.collect()  # graphs of earlier tests may wait in reference cycles (tracebacks)
    before = len(runtime.registry)
    x = torch.randn(16, requires_grad=True)
    with gradguard.detect():
        y = (x.exp() * x.sin()).sum()
        assert len(runtime.registry) > before
        y.backward()
        assert len(runtime.registry) == before
        z = (x.exp() * x.sin()).sum()
        assert len(runtime.registry) > before
        del z
        assert len(runtime.registry) == before


def test_registry_keeps_no_tensor_alive():
    gc.collect()
    before = len(runtime.registry)
    with gradguard.detect():
        x = torch.randn(1000, requires_grad=True)
        h = x.exp()
        out = h.sigmoid()  # saves its own output
        ref = weakref.ref(h)
        del h, out
        gc.collect()
        assert ref() is None
        assert len(runtime.registry) == before


def test_memory_flat_over_1000_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(4, 8)
    counts = {}
    with gradguard.detect() as s:
        for step in range(1000):
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step in (99, 999):
                gc.collect()
                objects = gc.get_objects()
                counts[step] = (
                    sum(issubclass(type(o), torch.Tensor) for o in objects),
                    len(runtime.registry),
                    runtime.registry.index_size(),
                )
                del objects  # it holds this step's tensors
    assert s.conflicts == []
    assert counts[999][0] == counts[99][0], counts  # no tensor kept alive across steps
    assert counts[999][1] == 0 and counts[99][1] == 0  # no live record after backward
    # Dead weak references are swept in batches, so the index stays bounded.
    registry = runtime.registry
    assert counts[999][2] <= registry._DRAIN_AT + 2 * registry._SWEEP_MIN, counts


def test_threads_each_with_a_session():
    errors, found = [], []

    def worker(i):
        try:
            torch.manual_seed(i)
            lin = nn.Linear(4, 4)
            with gradguard.detect(on_conflict="record") as s:
                for _ in range(30):
                    h = torch.sigmoid(lin(torch.randn(2, 4)))
                    if i == 0:
                        h.data.mul_(0.5)  # only thread 0 corrupts
                    h.sum().backward()
            found.append((i, len(s.conflicts)))
        except Exception as e:  # pragma: no cover - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(found) == [(0, 1), (1, 0), (2, 0), (3, 0)]
    assert len(runtime.registry) == 0


def test_nested_sessions_share_findings_with_the_outer():
    x = torch.randn(3, requires_grad=True)
    with gradguard.detect(on_conflict="record") as outer:
        with gradguard.detect(on_conflict="record") as inner:
            y = x.exp()
            y.data.zero_()
            y.sum().backward()
        assert intercept.active()  # the outer session still needs the patches
    assert len(inner.conflicts) == 1 and outer.conflicts == inner.conflicts
    assert not intercept.active()


def test_backward_after_the_session_exits_is_still_checked():
    """Our hooks turned off PyTorch's version check for these tensors, so we must check."""
    x = torch.randn(3, requires_grad=True)
    with gradguard.detect():
        y = x.exp()
    y.mul_(2)
    with pytest.raises(gradguard.InplaceConflictError, match="modified by an inplace"):
        y.sum().backward()


def test_save_on_cpu_inside_detect_is_a_reported_gap():
    x = torch.randn(3, requires_grad=True)
    with gradguard.detect() as s:
        with torch.autograd.graph.save_on_cpu():
            y = x.exp()
        y.sum().backward()
    assert s.conflicts == []
    assert len(s.coverage_gaps) == 1 and "save_on_cpu" in s.coverage_gaps[0]
    assert "coverage gaps" in s.report()
    assert torch.equal(x.grad, x.detach().exp())


def test_detect_inside_other_hooks_is_a_reported_gap():
    x = torch.randn(3, requires_grad=True)
    with torch.autograd.graph.save_on_cpu():
        with gradguard.detect() as s:
            x.exp().sum().backward()
    assert any("inside other saved-tensor hooks" in g for g in s.coverage_gaps)


def test_checkpoint_hooks_are_not_a_gap():
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    with gradguard.detect() as s:
        checkpoint(lambda t: lin(t).tanh(), x, use_reentrant=False).sum().backward()
    assert s.coverage_gaps == [] and s.conflicts == []


def test_decorator_forms():
    guard = gradguard.detect(on_conflict="record")

    @guard
    def step(x):
        y = x.exp()
        y.data.zero_()
        y.sum().backward()

    step(torch.randn(2, requires_grad=True))
    step(torch.randn(2, requires_grad=True))
    assert len(guard.conflicts) == 1  # deduplicated by write and save site
    assert step.gradguard_session is guard

    @gradguard.detect
    def clean(x):
        x.exp().sum().backward()

    clean(torch.randn(2, requires_grad=True))


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="on_conflict must be"):
        gradguard.detect(on_conflict="explode")
    with pytest.raises(ValueError, match="when must be"):
        gradguard.detect(when="later")
    with pytest.raises(ValueError, match="max_stack must be"):
        gradguard.detect(max_stack=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_still_works_under_detect():
    @torch.jit.script
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(x * 2)

    with gradguard.detect():
        def g(x: torch.Tensor) -> torch.Tensor:
            return torch.relu_(torch.add(x, 1))  # resolved while torch.* is patched

        scripted = torch.jit.script(g)
        assert torch.equal(f(torch.ones(2)), torch.full((2,), 2.0))
        assert torch.equal(scripted(torch.ones(2)), torch.full((2,), 2.0))


def test_patches_pass_through_after_exit_and_unpatch_restores_originals():
    from gradguard._core.runtime import unpatch_all

    unpatch_all()  # earlier tests left the (inactive) patches in place
    originals = (torch.relu_, torch.add, torch._foreach_add_, torch.Tensor.__setitem__)
    with gradguard.detect():
        assert torch.relu_ is not originals[0]  # patched while active
    x = torch.ones(3)
    x.add_(1)  # inactive wrappers pass straight through
    assert torch.equal(x, torch.full((3,), 2.0))
    unpatch_all()
    assert "add_" not in torch.Tensor.__dict__ and "data" not in torch.Tensor.__dict__
    assert (torch.relu_, torch.add, torch._foreach_add_, torch.Tensor.__setitem__) == originals
    assert not intercept.installed()
    with pytest.raises(gradguard.InplaceConflictError):  # and it installs again on demand
        with gradguard.detect():
            y = torch.randn(2, requires_grad=True).exp()
            y.mul_(2)
            y.sum().backward()
