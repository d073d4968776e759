"""Training-step overhead of gradguard.detect() vs plain PyTorch vs anomaly mode.

For each model, three conditions run side by side in one process, on one model and one
optimizer per condition built from the same seed:

    plain     the training step as is
    detect    the same step inside ``gradguard.detect()`` (entered and exited every step)
    anomaly   the same step inside ``torch.autograd.detect_anomaly(check_nan=False)``

A training step is: forward, loss, ``loss.backward()``, ``optimizer.step()`` (AdamW),
``optimizer.zero_grad()``. After warmup, each repetition runs ``--steps`` steps of every
condition in turn (round-robin, the order rotated each repetition) so that thermal or
frequency drift and background noise hit every condition alike (the default, one step per
condition per round, interleaves as finely as possible). Every step is timed on
its own; the table gives the median and minimum step time and the median's ratio to plain.

    python benchmarks/overhead.py                       # all models, defaults
    python benchmarks/overhead.py --models gpt2,bert --steps 5 --repeats 10 --json out.json
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
import warnings
from typing import Any, Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models as M  # noqa: E402  (benchmarks/models.py, shared with the tests)

import gradguard  # noqa: E402

CONDITIONS: Dict[str, Callable[[], Any]] = {
    "plain": contextlib.nullcontext,
    "detect": lambda: gradguard.detect(),
    "anomaly": lambda: torch.autograd.detect_anomaly(check_nan=False),
}
DEFAULT_MODELS = ["gpt2", "bert", "resnet", "transformer_encoder"]
OPTIMIZERS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-4),  # CPU default: for-loop impl.
    "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-4, foreach=True),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9),
}


def _step(work: M.Workload, opt: torch.optim.Optimizer,
          ctx: Callable[[], Any]) -> tuple[float, float]:
    """One timed training step: (wall seconds, process CPU seconds)."""
    c0, t0 = time.process_time(), time.perf_counter()
    with ctx():
        loss = work.loss()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_model(name: str, size: str, steps: int, repeats: int, warmup: int,
                optimizer: str, conditions: List[str]) -> dict:
    runs = {}
    for cond in conditions:
        work = M.build(name, size=size, seed=0)
        work.model.train()
        runs[cond] = (work, OPTIMIZERS[optimizer](work.model.parameters()))
    times: Dict[str, List[float]] = {c: [] for c in conditions}
    cpu: Dict[str, List[float]] = {c: [] for c in conditions}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anomaly mode warns on every entry
        for cond in conditions:
            work, opt = runs[cond]
            for _ in range(warmup):
                _step(work, opt, CONDITIONS[cond])
        for rep in range(repeats):
            order = conditions[rep % len(conditions):] + conditions[:rep % len(conditions)]
            for cond in order:
                work, opt = runs[cond]
                for _ in range(steps):
                    wall, proc = _step(work, opt, CONDITIONS[cond])
                    times[cond].append(wall)
                    cpu[cond].append(proc)
    config = runs[conditions[0]][0].config
    params = sum(p.numel() for p in runs[conditions[0]][0].model.parameters())
    result = {"model": name, "config": config, "params": params, "conditions": {}}
    base = statistics.median(times["plain"]) if "plain" in times else None
    for cond in conditions:
        ts = times[cond]
        med = statistics.median(ts)
        cpu_med = statistics.median(cpu[cond])
        # paired: each step against the plain step of the same round (same noise, mostly)
        paired = [t / p for t, p in zip(ts, times["plain"])] if base else []
        result["conditions"][cond] = {
            "median_ms": med * 1e3, "min_ms": min(ts) * 1e3, "n": len(ts),
            "ratio_median": (med / base) if base else None,
            "ratio_min": (min(ts) / min(times["plain"])) if base else None,
            "ratio_paired_median": statistics.median(paired) if paired else None,
            "cpu_median_ms": cpu_med * 1e3,
            "ratio_cpu_median": cpu_med / statistics.median(cpu["plain"]) if base else None,
            "times_ms": [t * 1e3 for t in ts],
            "cpu_ms": [t * 1e3 for t in cpu[cond]],
        }
    return result


def markdown(results: List[dict], meta: dict) -> str:
    lines = [
        f"torch {meta['torch']}, {meta['threads']} threads, {meta['machine']}; "
        f"optimizer {meta['optimizer']}; {meta['steps'] * meta['repeats']} timed steps per "
        f"condition (after {meta['warmup']} warmup), interleaved round-robin "
        f"{meta['steps']} step(s) at a time. Ratio cells: median wall time / plain's "
        "(in brackets: min / plain's min; process CPU time median / plain's).",
        "",
        "| model | config | plain median (min) ms | detect median (min) ms | detect / plain "
        "| anomaly median (min) ms | anomaly / plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["conditions"]
        cells = [r["model"], f"{r['config']} ({r['params'] / 1e6:.1f}M params)"]
        for cond in ("plain", "detect", "anomaly"):
            if cond not in c:
                cells.append("-")
                if cond != "plain":
                    cells.append("-")
                continue
            cells.append(f"{c[cond]['median_ms']:.1f} ({c[cond]['min_ms']:.1f})")
            if cond != "plain":
                cells.append(f"**{c[cond]['ratio_median']:.3f}x** (min {c[cond]['ratio_min']:.3f}x; "
                             f"cpu {c[cond]['ratio_cpu_median']:.3f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma-separated, from {sorted(M.BUILDERS)}")
    ap.add_argument("--steps", type=int, default=1,
                    help="timed steps of one condition before switching to the next")
    ap.add_argument("--repeats", type=int, default=20, help="round-robin repetitions")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per condition")
    ap.add_argument("--size", default="bench", choices=["tiny", "bench"])
    ap.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZERS))
    ap.add_argument("--conditions", default="plain,detect,anomaly")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--json", metavar="OUT", help="also write all results (every step time)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    conditions = args.conditions.split(",")
    assert conditions[0] == "plain", "plain must be first: ratios are relative to it"
    meta = {
        "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores visible)",
        "optimizer": args.optimizer, "steps": args.steps, "repeats": args.repeats,
        "warmup": args.warmup, "size": args.size,
        "loadavg_start": os.getloadavg(),
    }
    results = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        r = bench_model(name, args.size, args.steps, args.repeats, args.warmup,
                        args.optimizer, conditions)
        results.append(r)
        c = r["conditions"]
        extra = "  ".join(f"{k} {v['median_ms']:.1f}ms ({v['ratio_median'] or 1:.3f}x)"
                          for k, v in c.items())
        print(f"# {name}: {extra}  [{time.perf_counter() - t0:.0f}s]", file=sys.stderr,
              flush=True)
    meta["loadavg_end"] = os.getloadavg()
    print(markdown(results, meta))
    print(f"\nload average (1, 5, 15 min) at start {meta['loadavg_start']}, at end "
          f"{meta['loadavg_end']}: above {meta['threads']} means other processes competed "
          "for the cores; trust the min columns more then.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
