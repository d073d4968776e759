"""Copy-on-write side by side: plain vs gradguard.protect() vs PyTorch's
torch.autograd.graph.allow_mutation_on_saved_tensors().

Three measurements, one run:

1. Real models (GPT-2, BERT, ResNet, TransformerEncoder from models.py): training-step
   time, the three conditions interleaved round-robin in one process (as in overhead.py),
   and peak extra memory: each condition runs the same steps in a fresh subprocess whose
   peak RSS is compared with plain's. Also protect's exact ``copied_bytes``.
2. Synthetic: a large activation of which a small slice is saved and a different slice
   written in place. Time (interleaved), peak extra RSS (subprocesses), bytes protect
   copied, and whether each condition's gradient equals the snapshot reference.
3. Correctness: the two view/base cases from issue #4, gradient per condition against the
   snapshot reference (every saved tensor copied at save time).

    python benchmarks/protect.py                  # everything, defaults
    python benchmarks/protect.py --models gpt2 --repeats 10 --json protect.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models as M  # noqa: E402

import gradguard  # noqa: E402
from gradguard._core.snapshot import snapshot_saved_tensors  # noqa: E402

CONDITIONS: Dict[str, Callable[[], Any]] = {
    "plain": contextlib.nullcontext,
    "protect": lambda: gradguard.protect(),
    "allow_mutation": lambda: torch.autograd.graph.allow_mutation_on_saved_tensors(),
}
NAMES = list(CONDITIONS)
DEFAULT_MODELS = ["gpt2", "bert", "resnet", "transformer_encoder"]


# -- workloads -------------------------------------------------------------------------------

def model_runner(name: str, size: str) -> Callable[[Callable[[], Any]], Any]:
    work = M.build(name, size=size, seed=0)
    work.model.train()
    opt = torch.optim.AdamW(work.model.parameters(), lr=1e-4)

    def step(ctx: Callable[[], Any]) -> Any:
        with ctx() as session:
            M.train_step(work, opt)
        return session

    return step


def synthetic_runner(rows: int, cols: int, saved_rows: int, plain_writes: bool = False
                     ) -> Callable[[Callable[[], Any]], Any]:
    """``act = x @ w`` is large; ``act[:saved_rows] * v`` saves only that slice; then rows
    ``saved_rows:2*saved_rows`` are zeroed in place (a mask, say). No saved byte changes.
    Stock PyTorch rejects the write (the slice's version counter moved), so for timing,
    ``plain`` runs the step without the write: the floor the other two are compared to."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 64, generator=g)
    w = torch.randn(64, cols, generator=g).requires_grad_()
    v = torch.randn(cols, generator=g).requires_grad_()

    def step(ctx: Callable[[], Any]) -> Any:
        w.grad = v.grad = None
        with ctx() as session:
            act = x @ w
            y = (act[:saved_rows] * v).sum()
            if plain_writes or ctx is not CONDITIONS["plain"]:
                act[saved_rows:2 * saved_rows].zero_()
            y.backward()
        step.grads = (w.grad.clone(), v.grad.clone())  # type: ignore[attr-defined]
        return session

    return step


def saved_whole_runner(rows: int, cols: int, plain_writes: bool = False
                       ) -> Callable[[Callable[[], Any]], Any]:
    """The opposite case: softmax saves the whole activation (its output), then a slice of
    that output is overwritten in place. The saved bytes do change, so a correct copy-on-
    write must copy the saved tensor. ``plain`` again skips the write (stock rejects it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 64, generator=g)
    w = torch.randn(64, cols, generator=g).requires_grad_()

    def step(ctx: Callable[[], Any]) -> Any:
        w.grad = None
        with ctx() as session:
            probs = torch.softmax(x @ w, dim=-1)  # SoftmaxBackward saves probs, whole
            y = probs[:16].sum() + (probs[16:] * probs[16:]).sum()
            if plain_writes or ctx is not CONDITIONS["plain"]:
                probs[16:32].zero_()
            y.backward()
        step.grads = (w.grad.clone(),)  # type: ignore[attr-defined]
        return session

    return step


SYNTHETIC = {
    "synthetic_slice_saved": lambda plain_writes=False: synthetic_runner(
        8192, 2048, 16, plain_writes),
    "synthetic_whole_saved": lambda plain_writes=False: saved_whole_runner(
        8192, 2048, plain_writes),
}


def build_runner(spec: str, size: str) -> Callable[[Callable[[], Any]], Any]:
    if spec in SYNTHETIC:
        return SYNTHETIC[spec]()
    return model_runner(spec, size)


# -- time, interleaved -------------------------------------------------------------------------

def time_conditions(spec: str, size: str, repeats: int, warmup: int) -> dict:
    runners = {c: build_runner(spec, size) for c in NAMES}
    times: Dict[str, List[float]] = {c: [] for c in NAMES}
    sessions = {}
    for c in NAMES:
        for _ in range(warmup):
            sessions[c] = runners[c](CONDITIONS[c])
    for rep in range(repeats):
        order = NAMES[rep % 3:] + NAMES[:rep % 3]
        for c in order:
            t0 = time.perf_counter()
            runners[c](CONDITIONS[c])
            times[c].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    out = {c: {"median_ms": statistics.median(ts) * 1e3,
               "ratio": statistics.median(ts) / base} for c, ts in times.items()}
    session = runners["protect"](CONDITIONS["protect"])
    out["protect"]["copied_bytes_per_step"] = session.copied_bytes
    out["protect"]["copies_per_step"] = session.copies
    return out


# -- peak memory, one subprocess per condition ----------------------------------------------

def _peak_rss() -> int:
    """This process's peak resident set, in bytes. Linux's VmHWM belongs to the address
    space, so unlike ``ru_maxrss`` it does not inherit the parent's peak across fork+exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # fallback (KiB)


def _peak_rss_child(spec: str, size: str, condition: str, steps: int) -> None:
    """Child process: run ``steps`` steps, print its peak RSS in bytes."""
    torch.set_num_threads(1)
    run = build_runner(spec, size)
    for _ in range(steps):
        run(CONDITIONS[condition])
    print(_peak_rss())


def peak_extra_memory(spec: str, size: str, steps: int) -> dict:
    peaks = {}
    for c in NAMES:
        out = subprocess.run(
            [sys.executable, __file__, "--_child", spec, size, c, str(steps)],
            check=True, capture_output=True, text=True)
        peaks[c] = int(out.stdout.strip().splitlines()[-1])
    return {c: peaks[c] - peaks["plain"] for c in NAMES}


# -- correctness ---------------------------------------------------------------------------------

def _view_of_saved_base() -> tuple:
    a = torch.arange(1.0, 7.0).reshape(2, 3).requires_grad_()
    b = a * 1
    y = (b * b).sum()  # saves b
    b[1].zero_()  # writes a view of it
    y.backward()
    return (a.grad,)


def _base_of_saved_view() -> tuple:
    a = torch.arange(1.0, 7.0).reshape(2, 3).requires_grad_()
    b = a * 1
    v = b[1]
    y = (v * v).sum()  # saves the view b[1]
    b.zero_()  # writes its base
    y.backward()
    return (a.grad,)


def correctness() -> dict:
    def grads(program: Callable[[], tuple], ctx: Callable[[], Any]) -> Any:
        try:
            with ctx():
                return program()
        except RuntimeError as exc:
            return f"raises: {str(exc).splitlines()[0][:60]}..."

    def synthetic(name: str) -> Callable[[Callable[[], Any]], Any]:
        def program(ctx: Callable[[], Any]) -> Any:
            run = SYNTHETIC[name](plain_writes=True)
            try:
                run(ctx)
            except RuntimeError as exc:
                return f"raises: {str(exc).splitlines()[0][:60]}..."
            return run.grads  # type: ignore[attr-defined]

        return program

    table = {}
    cases = {
        "save b, write b[1]": lambda ctx: grads(_view_of_saved_base, ctx),
        "save b[1], write b": lambda ctx: grads(_base_of_saved_view, ctx),
        "synthetic_slice_saved (slice saved, other slice written)":
            synthetic("synthetic_slice_saved"),
        "synthetic_whole_saved (softmax output saved, a slice written)":
            synthetic("synthetic_whole_saved"),
    }
    for case, run in cases.items():
        ref = run(snapshot_saved_tensors)
        row = {}
        for c in NAMES:
            got = run(CONDITIONS[c])
            if isinstance(got, str):
                row[c] = got
            else:
                ok = all(torch.equal(a, b) for a, b in zip(got, ref))
                row[c] = "correct" if ok else "WRONG: " + (
                    str(got[0].tolist()) if got[0].numel() <= 6 else "differs from reference")
        table[case] = row
    return table


def main(argv: List[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--_child"]:
        _peak_rss_child(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--size", default="bench", choices=["tiny", "bench"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--memory-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    specs = [m for m in args.models.split(",") if m] + list(SYNTHETIC)
    results: Dict[str, Any] = {
        "meta": {"torch": torch.__version__, "python": platform.python_version(),
                 "threads": args.threads, "cpus": os.cpu_count(), "repeats": args.repeats,
                 "size": args.size, "memory_steps": args.memory_steps},
        "rows": {},
    }
    for spec in specs:
        t0 = time.perf_counter()
        row = time_conditions(spec, args.size, args.repeats, args.warmup)
        extra = peak_extra_memory(spec, args.size, args.memory_steps)
        for c in NAMES:
            row[c]["peak_extra_rss_mib"] = extra[c] / 2**20
        results["rows"][spec] = row
        print(f"# {spec}: " + "  ".join(
            f"{c} {row[c]['median_ms']:.1f}ms ({row[c]['ratio']:.3f}x, "
            f"{row[c]['peak_extra_rss_mib']:+.0f} MiB)" for c in NAMES)
            + f"  [{time.perf_counter() - t0:.0f}s]", file=sys.stderr, flush=True)
    results["correctness"] = correctness()

    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores; "
          f"{args.repeats} interleaved steps per condition; peak extra RSS over plain, each "
          f"condition in its own process running {args.memory_steps} steps.\n")
    print("| workload | plain ms | protect | allow_mutation_on_saved_tensors | "
          "protect copied per step |")
    print("|---|---|---|---|---|")
    for spec, row in results["rows"].items():
        cells = [spec, f"{row['plain']['median_ms']:.1f}"]
        for c in ("protect", "allow_mutation"):
            cells.append(f"{row[c]['ratio']:.3f}x, {row[c]['peak_extra_rss_mib']:+.0f} MiB")
        cells.append(f"{row['protect']['copied_bytes_per_step']} B "
                     f"({row['protect']['copies_per_step']} copies)")
        print("| " + " | ".join(cells) + " |")
    print("\n| case | plain | protect | allow_mutation_on_saved_tensors |")
    print("|---|---|---|---|")
    for case, row in results["correctness"].items():
        print(f"| {case} | {row['plain']} | {row['protect']} | {row['allow_mutation']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
