"""GG113's fixture on real DistributedDataParallel: a one-process gloo group (world
size 1 still broadcasts the buffers before each forward).

The installed PyTorch may carry pytorch/pytorch#175851, which wraps DDP's buffer
broadcast in ``torch.autograd._unsafe_preserve_version_counter``; then the buggy
cases run.  The releases GG113 is about (2.6 up to that fix) broadcast without it;
``affected`` simulates them by replacing that context manager with a no-op, and
there every ``bug_<name>`` raises "modified by an inplace operation" while its
``fixed_<name>`` runs and gets the gradients of the same program without DDP."""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from torch.nn.parallel import DistributedDataParallel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`broadcast_buffers` is deprecated:FutureWarning")
PATH = Path(__file__).parent / "fixtures" / "GG113" / "case.py"


def _load():
    spec = importlib.util.spec_from_file_location("gg113_case", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MOD = _load()
CASES = sorted(n[4:] for n in vars(MOD) if n.startswith("bug_"))


@pytest.fixture(scope="module", autouse=True)
def group(tmp_path_factory):
    store = tmp_path_factory.mktemp("gloo") / "store"
    hook = sys.excepthook
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    sys.excepthook = hook  # init_process_group installs one that prefixes "[rank0]: " to every traceback


@pytest.fixture
def affected(monkeypatch):
    """DDP as released before pytorch/pytorch#175851: the broadcast bumps versions."""
    monkeypatch.setattr(torch.autograd, "_unsafe_preserve_version_counter",
                        lambda *a, **k: contextlib.nullcontext(), raising=False)


def _net():
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)).double()


def _batches():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)


def _grads(fn, monkeypatch=None):
    net = _net()
    if monkeypatch is not None:  # the reference: the same program without DDP
        with monkeypatch.context() as m:
            m.setattr(MOD, "DDP", lambda module, **kw: module)
            m.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, **kw: module)
            fn(net, *_batches())
    else:
        fn(net, *_batches())
    return [p.grad.clone() for p in net.parameters()]


def test_every_bug_has_a_fixed_twin() -> None:
    fixes = sorted(n[6:] for n in vars(MOD) if n.startswith("fixed_"))
    assert CASES and CASES == fixes


@pytest.mark.parametrize("case", CASES)
def test_bug_raises_where_the_broadcast_bumps_versions(case: str, affected) -> None:
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        getattr(MOD, f"bug_{case}")(_net(), *_batches())


@pytest.mark.parametrize("case", CASES)
def test_fixed_runs_and_matches_the_program_without_ddp(case: str, affected, monkeypatch) -> None:
    fixed = getattr(MOD, f"fixed_{case}")
    got, want = _grads(fixed), _grads(fixed, monkeypatch)
    assert all(torch.allclose(a, b) for a, b in zip(got, want))


def test_legal_cases_run(affected) -> None:
    for name in ("no_sync_first", "only_the_last_forward", "without_ddp"):
        getattr(MOD, name)(_net(), *_batches())


def test_world_size_one_still_broadcasts_before_each_forward(monkeypatch) -> None:
    calls = []
    real = DistributedDataParallel._sync_buffers
    monkeypatch.setattr(DistributedDataParallel, "_sync_buffers", lambda self: (calls.append(1), real(self))[1])
    MOD.fixed_loss_over_a_loop(_net(), *_batches())  # backward after each forward: each forward broadcasts
    assert len(calls) == 2
    calls.clear()
    MOD.fixed_two_forwards(_net(), *_batches())  # broadcast_buffers=False
    assert not calls


def test_the_installed_release() -> None:
    """Releases with pytorch/pytorch#175851 keep the buffers' versions: the bug runs there."""
    if "_unsafe_preserve_version_counter" in inspect.getsource(DistributedDataParallel._sync_buffers):
        MOD.bug_two_forwards(_net(), *_batches())
    else:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            MOD.bug_two_forwards(_net(), *_batches())
