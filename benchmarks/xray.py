"""Cost of `gradguard.xray()` on one training step, vs plain PyTorch.

Each model from models.py runs full training steps (forward, loss, ``backward()``,
``AdamW.step()``, ``zero_grad()``): ``plain``, and under ``with gradguard.xray():``
(recording the step: the pack hook, the graph walk at backward, the write listener and
the TorchFunctionMode over every torch call), interleaved in one process; medians. The
report (``to_dict()``: resolving lines, naming parameters) is timed apart, once per
step, since a script pays it once.

    python benchmarks/xray.py --size tiny --repeats 10 --json xray.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models as M  # noqa: E402

import gradguard  # noqa: E402

DEFAULT_MODELS = ["gpt2", "bert", "resnet", "transformer_encoder"]


def measure(name: str, size: str, repeats: int, warmup: int) -> dict:
    work = M.build(name, size=size, seed=0)
    work.model.train()
    opt = torch.optim.AdamW(work.model.parameters(), lr=1e-4)
    times: Dict[str, List[float]] = {"plain": [], "xray": [], "report": []}
    last = None

    def plain() -> None:
        M.train_step(work, opt)

    def xray() -> None:
        nonlocal last
        with gradguard.xray() as last:
            M.train_step(work, opt)

    for _ in range(warmup):
        plain()
        xray()
    for rep in range(repeats):
        for cond in (("plain", "xray") if rep % 2 == 0 else ("xray", "plain")):
            t0 = time.perf_counter()
            (plain if cond == "plain" else xray)()
            times[cond].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        data = last.to_dict()
        times["report"].append(time.perf_counter() - t0)
    med = {c: statistics.median(v) for c, v in times.items()}
    return {"model": name, "config": work.config,
            "saved_tensors": data["saved_tensors"], "nodes": len(data["nodes"]),
            "peak_saved_bytes": data["peak_saved_bytes"],
            "median_ms": {c: round(1e3 * m, 2) for c, m in med.items()},
            "ratio": round(med["xray"] / med["plain"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--size", default="tiny", choices=["tiny", "bench"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(m, args.size, args.repeats, args.warmup) for m in args.models]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} interleaved "
          f"repeats, size {args.size}; medians")
    print(f"{'model':22} {'saved':>6} {'nodes':>6} {'plain ms':>9} {'xray ms':>9} "
          f"{'ratio':>6} {'report ms':>10}")
    for r in results:
        ms = r["median_ms"]
        print(f"{r['model']:22} {r['saved_tensors']:>6} {r['nodes']:>6} {ms['plain']:>9.1f} "
              f"{ms['xray']:>9.1f} {r['ratio']:>5.2f}x {ms['report']:>10.1f}")
    if args.json:
        env = {"torch": torch.__version__, "python": platform.python_version(),
               "threads": args.threads, "repeats": args.repeats, "size": args.size}
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
