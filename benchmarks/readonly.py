"""Cost of `gradguard.readonly()` on a training step, vs plain PyTorch.

Every parameter of the model is made read-only, so the step is what a frozen model runs:
forward, loss, ``backward()`` (gradients are computed: ``.grad`` is not the parameter)
and ``zero_grad()``; no optimizer step, which would write the parameters. Three
conditions, interleaved round-robin in one process, medians reported:

* ``plain``: the step as is;
* ``readonly_all``: ``with gradguard.readonly(*model.parameters()):`` around each step
  (entered and exited every step: the watch set is built and torn down each time);
* ``readonly_other``: one unrelated tensor read-only: what writes of unlisted tensors
  (every ``relu_``, dropout, ``zero_grad``) cost while a readonly session is active.

Then the per-call cost of a write to an unlisted tensor, with and without a readonly
session active.

    python benchmarks/readonly.py --repeats 20 --json readonly.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models as M  # noqa: E402

import gradguard  # noqa: E402

NAMES = ["plain", "readonly_all", "readonly_other"]
DEFAULT_MODELS = ["gpt2", "bert", "resnet", "transformer_encoder"]


def runner(name: str, size: str) -> tuple[Callable[[str], None], Any]:
    work = M.build(name, size=size, seed=0)
    work.model.train()
    params = list(work.model.parameters())
    other = torch.zeros(16)
    contexts: Dict[str, Callable[[], Any]] = {
        "plain": contextlib.nullcontext,
        "readonly_all": lambda: gradguard.readonly(*params),
        "readonly_other": lambda: gradguard.readonly(other),
    }

    def step(condition: str) -> None:
        with contexts[condition]():
            loss = work.loss()
            loss.backward()
            work.model.zero_grad(set_to_none=False)  # writes every .grad in place

    return step, work


def measure(name: str, size: str, repeats: int, warmup: int) -> dict:
    step, work = runner(name, size)
    for _ in range(warmup):
        for c in NAMES:
            step(c)
    times: Dict[str, List[float]] = {c: [] for c in NAMES}
    for rep in range(repeats):
        order = NAMES[rep % 3:] + NAMES[:rep % 3]
        for c in order:
            t0 = time.perf_counter()
            step(c)
            times[c].append(time.perf_counter() - t0)
    med = {c: statistics.median(v) for c, v in times.items()}
    return {"model": name, "config": work.config,
            "parameters": sum(1 for _ in work.model.parameters()),
            "median_ms": {c: round(1e3 * m, 3) for c, m in med.items()},
            "ratio": {c: round(med[c] / med["plain"], 3) for c in NAMES}}


def write_cost(n: int = 20000, rounds: int = 7) -> dict:
    """Per-write cost of an unlisted tensor's in-place write (``t.add_(1)`` on 16
    floats): no session, a readonly session watching another tensor, one watching 200."""
    t = torch.zeros(16)
    others = [torch.zeros(4) for _ in range(200)]

    def loop() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            t.add_(1)
        return (time.perf_counter() - t0) / n

    out: Dict[str, List[float]] = {"no session": [], "readonly, 1 other": [],
                                   "readonly, 200 others": []}
    for _ in range(rounds):
        out["no session"].append(loop())
        with gradguard.readonly(others[0]):
            out["readonly, 1 other"].append(loop())
        with gradguard.readonly(*others):
            out["readonly, 200 others"].append(loop())
    return {k: round(1e9 * statistics.median(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--size", default="bench", choices=["tiny", "bench"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(m, args.size, args.repeats, args.warmup) for m in args.models]
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "threads": args.threads, "repeats": args.repeats, "size": args.size}
    print(f"torch {env['torch']}, {args.threads} threads, {args.repeats} interleaved "
          f"repeats, size {args.size}; medians")
    print(f"{'model':22} {'params':>6} {'plain ms':>9} {'readonly_all':>13} {'readonly_other':>15}")
    for r in results:
        ms, ratio = r["median_ms"], r["ratio"]
        print(f"{r['model']:22} {r['parameters']:>6} {ms['plain']:>9.2f} "
              f"{ms['readonly_all']:>8.2f} {ratio['readonly_all']:.2f}x "
              f"{ms['readonly_other']:>9.2f} {ratio['readonly_other']:.2f}x")
    per_write = write_cost()
    print("unlisted write t.add_(1), ns per call (median): " +
          ", ".join(f"{k} {v}" for k, v in per_write.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results, "write_ns": per_write}, f, indent=1)


if __name__ == "__main__":
    main()
