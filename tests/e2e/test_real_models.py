"""gradguard.detect() on real (small, random-init) models: no false positives, no change
to the numbers, no memory growth.

Every training run here is a correct program, so under ``detect(on_conflict="raise")`` it
must raise nothing and record nothing, and its gradients, parameters, buffers and optimizer
state must be bit-identical (``torch.equal``) to the same steps run without gradguard.

Model builders live in ``benchmarks/models.py`` (shared with ``benchmarks/overhead.py``).
"""
from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import torch

import gradguard
from gradguard._core import intercept
from gradguard._core.runtime import runtime

pytest.importorskip("transformers")


def _load_models():
    name = "_gradguard_bench_models"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "models.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


M = _load_models()

OPTIMIZERS: Dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    # On CPU, AdamW's default picks the for-loop implementation; also run foreach and fused.
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3),
    "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
    "sgd_momentum_foreach": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9,
                                                       nesterov=True, foreach=True),
}

MODELS = {
    "gpt2": dict(name="gpt2"),
    "bert": dict(name="bert"),
    "resnet": dict(name="resnet"),
    "encoder_post_norm": dict(name="transformer_encoder", norm_first=False),
    "encoder_pre_norm": dict(name="transformer_encoder", norm_first=True),
}


def _clone_state(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_state(v) for v in obj)
    return obj


def _run(model_kwargs: dict, opt_name: str, guarded: bool | str, steps: int = 2,
         set_to_none: bool = True, accumulate: int = 1) -> dict:
    """Build the model from seed 0 and run ``steps`` training steps; return everything
    that the steps produced (losses, per-step grads, final params/buffers/optimizer).
    ``guarded``: False (plain), True (under detect) or "protect"."""
    kwargs = dict(model_kwargs)
    work = M.build(kwargs.pop("name"), size="tiny", seed=0, **kwargs)
    work.model.train()
    opt = OPTIMIZERS[opt_name](work.model.parameters())
    out: dict = {"losses": [], "grads": [], "params": []}
    session = (gradguard.protect(on_conflict="raise") if guarded == "protect"
               else gradguard.detect(on_conflict="raise") if guarded else None)

    def steps_loop() -> None:
        for step in range(steps):
            for micro in range(accumulate):
                torch.manual_seed(1000 + 10 * step + micro)  # same dropout masks in both runs
                loss = work.loss()
                loss.backward()
                out["losses"].append(loss.detach().clone())
            out["grads"].append({n: _clone_state(p.grad)
                                 for n, p in work.model.named_parameters()})
            opt.step()
            opt.zero_grad(set_to_none=set_to_none)
            out["params"].append({n: _clone_state(p) for n, p in work.model.named_parameters()})

    if session is None:
        steps_loop()
    else:
        with session:
            steps_loop()
        assert session.conflicts == [], session.report()
        assert session.report() == ""
        if guarded == "protect":
            assert session.copies == 0 and session.copied_bytes == 0  # nothing overwritten
    out["buffers"] = {n: _clone_state(b) for n, b in work.model.named_buffers()}
    out["opt_state"] = _clone_state(opt.state_dict()["state"])
    out["work"] = work
    return out


def _assert_identical(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max abs diff {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _compare(plain: dict, guarded: dict) -> None:
    for key in ("losses", "grads", "params", "buffers", "opt_state"):
        _assert_identical(plain[key], guarded[key], key)
    assert runtime.registry.records() == []
    assert len(runtime.registry) == 0
    assert not intercept.active()


@pytest.fixture(autouse=True)
def _deterministic():
    threads = torch.get_num_threads()
    # One intra-op thread: tiny models gain nothing from more, and OpenMP threads stall
    # badly when another process holds a core (CI runners, parallel test jobs).
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_training_steps_bit_identical(model: str, opt_name: str) -> None:
    plain = _run(MODELS[model], opt_name, guarded=False)
    guarded = _run(MODELS[model], opt_name, guarded=True)
    _compare(plain, guarded)
    # the steps really trained something
    assert not torch.equal(plain["params"][0][next(iter(plain["params"][0]))],
                           plain["params"][1][next(iter(plain["params"][1]))])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_protect_training_steps_bit_identical(model: str) -> None:
    """A correct program under protect(): no copies, no reports, the same numbers."""
    plain = _run(MODELS[model], "adamw_foreach", guarded=False)
    protected = _run(MODELS[model], "adamw_foreach", guarded="protect")
    _compare(plain, protected)


@pytest.mark.parametrize("model", ["gpt2", "resnet"])
def test_zero_grad_in_place_and_grad_accumulation(model: str) -> None:
    """``zero_grad(set_to_none=False)`` zeroes grads in place (an intercepted write on
    every .grad); two micro-batches accumulate into .grad before each step."""
    plain = _run(MODELS[model], "adamw_foreach", guarded=False, set_to_none=False, accumulate=2)
    guarded = _run(MODELS[model], "adamw_foreach", guarded=True, set_to_none=False,
                   accumulate=2)
    _compare(plain, guarded)


def test_resnet_batchnorm_running_stats_updated_identically() -> None:
    """Batch norm writes running_mean/var and num_batches_tracked in C++ during forward;
    those writes are not saved-tensor conflicts and must come out identical."""
    initial = M.build("resnet", size="tiny", seed=0)
    init_buffers = {n: b.clone() for n, b in initial.model.named_buffers()}
    plain = _run(MODELS["resnet"], "sgd_momentum", guarded=False, steps=3)
    guarded = _run(MODELS["resnet"], "sgd_momentum", guarded=True, steps=3)
    _compare(plain, guarded)
    running = [n for n in init_buffers if n.endswith("running_mean")]
    assert running, "expected batch norm layers"
    for n in running:
        assert not torch.equal(init_buffers[n], guarded["buffers"][n]), n
    tracked = [n for n in init_buffers if n.endswith("num_batches_tracked")]
    assert tracked and all(int(guarded["buffers"][n]) == 3 for n in tracked)


def test_resnet_two_forwards_one_backward() -> None:
    """Two forwards through the same train-mode BN model before one backward: BN's running
    stats move between the forwards, but they are never saved for backward."""
    results = []
    for guarded in (False, True):
        work = M.build("resnet", size="tiny", seed=0)
        work.model.train()
        x, y = work.batch
        ctx = gradguard.detect(on_conflict="raise") if guarded else None
        if ctx is not None:
            ctx.__enter__()
        try:
            loss = work.loss_fn(work.model, (x, y)) + work.loss_fn(work.model, (x.flip(0), y))
            loss.backward()
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        if ctx is not None:
            assert ctx.conflicts == []
        results.append(({n: p.grad.clone() for n, p in work.model.named_parameters()},
                        {n: b.clone() for n, b in work.model.named_buffers()}))
    _assert_identical(results[0], results[1])


# -- memory: no growth over many steps, nothing left behind -----------------------------

def _tensor_count() -> int:
    tensor = torch.Tensor
    return sum(1 for o in gc.get_objects() if issubclass(type(o), tensor))


def _flat_loop(work: Any, opt: torch.optim.Optimizer, steps: int, probes: List[int]) -> dict:
    samples: dict = {}
    per_step = 64
    with gradguard.detect(on_conflict="raise") as session:
        for step in range(1, steps + 1):
            loss = work.loss()
            live = len(runtime.registry)
            assert live > 0  # the graph's saved tensors are registered
            loss.backward()
            opt.step()
            opt.zero_grad()
            del loss
            assert len(runtime.registry) == 0, f"step {step}: records outlived backward"
            # dead index entries are swept in bulk (amortized), so the index stays bounded
            index = runtime.registry.index_size()
            bound = runtime.registry._DRAIN_AT + 2 * runtime.registry._SWEEP_MIN + 4 * per_step
            assert index <= bound, (step, index)
            if step in probes:
                runtime.registry.sweep()
                assert runtime.registry.index_size() == 0
                gc.collect()
                samples[step] = (len(gc.get_objects()), _tensor_count())
            elif step == 1:
                per_step = max(per_step, live)
    assert session.conflicts == []
    # the last session's exit sweeps the index
    assert runtime.registry.index_size() == 0 and len(runtime.registry) == 0
    return samples


def _assert_flat(samples: dict, first: int, last: int, slack: int) -> None:
    (objs_a, tensors_a), (objs_b, tensors_b) = samples[first], samples[last]
    assert tensors_b <= tensors_a, f"tensors grew {tensors_a} -> {tensors_b}"
    assert objs_b - objs_a <= slack, f"gc objects grew {objs_a} -> {objs_b}"


def test_memory_flat_mlp_1000_steps() -> None:
    work = M.build("mlp", size="tiny", seed=0)
    opt = torch.optim.AdamW(work.model.parameters(), lr=1e-3, foreach=True)
    samples = _flat_loop(work, opt, 1000, probes=[100, 1000])
    _assert_flat(samples, 100, 1000, slack=50)
    assert len(runtime.registry) == 0 and not intercept.active()


def test_memory_flat_gpt2_200_steps() -> None:
    work = M.build("gpt2", size="tiny", seed=0)
    work.model.train()
    opt = torch.optim.AdamW(work.model.parameters(), lr=1e-3)
    samples = _flat_loop(work, opt, 200, probes=[20, 200])
    _assert_flat(samples, 20, 200, slack=50)


def test_no_record_survives_session_and_backward() -> None:
    work = M.build("gpt2", size="tiny", seed=0)
    work.model.train()
    # forward inside the session, backward after it exits: records live as long as the graph
    with gradguard.detect(on_conflict="raise") as session:
        loss = work.loss()
    assert len(runtime.registry) > 0
    assert not intercept.active()
    loss.backward()
    del loss
    assert len(runtime.registry) == 0
    # a graph that is dropped without backward frees its records too
    with gradguard.detect(on_conflict="raise") as session2:
        loss = work.loss()
        assert len(runtime.registry) > 0
        del loss
        assert len(runtime.registry) == 0
    assert session.conflicts == [] and session2.conflicts == []
    gc.collect()
    assert runtime.registry.records() == [] and len(runtime.registry) == 0
