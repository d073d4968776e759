"""How much of detect()'s overhead is the price of saved-tensor hooks as such.

Six conditions, one model and optimizer each (same seed), interleaved step by step in one
process, the order rotated each round:

    plain       the training step as is
    identity    inside saved-tensor hooks that return the tensor unchanged (PyTorch's own
                cost of calling Python hooks at every save and unpack)
    minimal     inside hooks that keep the least a sanitizer needs: the tensor (detached
                unless a leaf, as detect() holds it) and its version, checked at unpack;
                no save site, no registry, no write interception
    detect      inside ``gradguard.detect()``
    no-sites    ``gradguard.detect()`` with the save-site walk replaced by an empty stack
                (an ablation, not a mode: its reports would name no save line)
    c-stacks    ``gradguard.detect()`` with the walk replaced by PyTorch's C++ capture of
                the whole Python stack (``torch._C._profiler.gather_traceback``; an
                ablation: it keeps no code objects, so no report could be built from it)

A step is forward, loss, ``backward()``, ``AdamW.step()``, ``zero_grad()``; each session or
hook context is entered and left every step, as in ``overhead.py``. Printed: the median
step time, its ratio to plain, and the median of the per-round ratios.

    python benchmarks/hook_floor.py                      # ResNet, 60 rounds, 2 threads
    python benchmarks/hook_floor.py --model gpt2 --rounds 20
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models as M  # noqa: E402

import gradguard  # noqa: E402
from gradguard._detect import session as detect_session  # noqa: E402  (the ablation)


class _Minimal:
    __slots__ = ("tensor", "version")


def _pack(t: torch.Tensor) -> _Minimal:
    rec = _Minimal()
    rec.tensor = t if t.grad_fn is None else t.detach()
    rec.version = t._version
    return rec


def _unpack(rec: _Minimal) -> torch.Tensor:
    if rec.tensor._version != rec.version:
        raise RuntimeError("a saved tensor was modified in place")
    return rec.tensor


@contextlib.contextmanager
def _sites_replaced(capture: Callable[[int, int], Any]) -> Iterator[None]:
    real = detect_session.capture_save
    detect_session.capture_save = capture
    try:
        with gradguard.detect():
            yield
    finally:
        detect_session.capture_save = real


_gather = torch._C._profiler.gather_traceback


CONDITIONS: Dict[str, Callable[[], Any]] = {
    "plain": contextlib.nullcontext,
    "identity": lambda: torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t),
    "minimal": lambda: torch.autograd.graph.saved_tensors_hooks(_pack, _unpack),
    "detect": lambda: gradguard.detect(),
    "no-sites": lambda: _sites_replaced(lambda skip, limit: ((), ())),
    "c-stacks": lambda: _sites_replaced(lambda skip, limit: (_gather(True, False, False), ())),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet", choices=sorted(M.BUILDERS))
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = list(CONDITIONS)
    runs = {}
    for name in names:
        work = M.build(args.model, size="bench", seed=0)
        work.model.train()
        runs[name] = (work, torch.optim.AdamW(work.model.parameters(), lr=1e-4))

    def step(name: str) -> float:
        work, opt = runs[name]
        t0 = time.perf_counter()
        with CONDITIONS[name]():
            work.loss().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for name in names:
        for _ in range(3):
            step(name)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(step(name))
    plain = statistics.median(times["plain"])
    print(f"{args.model}: {args.rounds} rounds, {args.threads} threads, torch {torch.__version__}")
    for name in names:
        med = statistics.median(times[name])
        paired = statistics.median(a / b for a, b in zip(times[name], times["plain"]))
        print(f"  {name:9s} {med * 1e3:8.2f} ms  {med / plain:6.3f}x  (per-round ratio {paired:.3f}x)")


if __name__ == "__main__":
    main()
