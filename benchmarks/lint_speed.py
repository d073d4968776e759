"""Lines per second of ``gradguard lint`` against TorchFix over the installed
``transformers`` sources, in one run.

    python benchmarks/lint_speed.py [--root DIR] [--jobs N] [--sample 20] [--skip-torchfix]
                                    [--torchfix-python /work/scratch/tfvenv/bin/python]

``--torchfix-python`` runs TorchFix from its own virtual environment (install it
there with ``pip install torchfix``, never into the environment that holds torch).
Besides wall-clock seconds, CPU seconds are reported for both tools (process time for
gradguard in process, the child's user+system time for TorchFix): on a shared machine
the CPU ratio is the fair one.

Both tools see the same file list and run single-process by default (TorchFix gets
``--jobs 1``; pass ``--jobs`` to change it).  TorchFix runs as a subprocess through
its own CLI (it exits non-zero and prints its diagnostics; we only time it).  Lines
per second always divide the total line count of *all* files, although TorchFix
skips files that do not contain the string "torch" before parsing.

Prints: files, lines, findings, crashes (must be 0), seconds and lines/s for both,
the ratio, and a reproducible random sample of findings for hand-checking.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path


def transformers_root() -> Path:
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("transformers is not installed: pip install transformers (or pass --root DIR)")
    return Path(list(spec.submodule_search_locations)[0])


def python_files(root: Path) -> list:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def time_gradguard(files: list) -> tuple:
    from gradguard.lint.engine import lint_file, resolve_selection

    codes = resolve_selection()
    start, cpu = time.perf_counter(), time.process_time()
    results = [lint_file(p, codes) for p in files]
    return time.perf_counter() - start, results, time.process_time() - cpu


def time_gradguard_cli(files: list) -> float:
    """The same run through the command line, for a like-for-like comparison with
    TorchFix's subprocess (interpreter start-up included)."""
    cmd = [sys.executable, "-m", "gradguard", "lint", "--format", "json", *map(str, files)]
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - start


def time_torchfix(files: list, jobs: int, python: str = "") -> tuple:
    if not python and importlib.util.find_spec("torchfix") is None:
        return None, "torchfix is not installed (pip install torchfix) -- timing gradguard only", None
    # TorchFix accepts many paths at once: one process, the same file list.
    cmd = [python or sys.executable, "-m", "torchfix", "--jobs", str(jobs), *map(str, files)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    findings = sum(1 for line in proc.stdout.splitlines() if ":" in line and " TOR" in line)
    return elapsed, f"{findings} findings, exit code {proc.returncode}", cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="source tree to lint (default: installed transformers)")
    parser.add_argument("--jobs", type=int, default=1, help="TorchFix --jobs (default 1: same as gradguard)")
    parser.add_argument("--sample", type=int, default=20, help="findings to print for hand-checking")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-torchfix", action="store_true")
    parser.add_argument("--torchfix-python", default="", help="interpreter of a venv with torchfix installed")
    args = parser.parse_args()

    root = args.root or transformers_root()
    files = python_files(root)
    lines = sum(p.read_bytes().count(b"\n") for p in files)
    print(f"corpus: {root}\nfiles: {len(files)}  lines: {lines}")

    gg_seconds, results, gg_cpu = time_gradguard(files)
    diags = [d for r in results for d in r.diagnostics]
    crashes = [r for r in results if r.crash]
    by_code = collections.Counter(d.code for d in diags)
    print(f"\ngradguard lint: {gg_seconds:.1f} s ({gg_cpu:.1f} CPU s), {lines / gg_seconds:,.0f} lines/s")
    print(f"  findings: {len(diags)} ({', '.join(f'{c} {n}' for c, n in sorted(by_code.items()))})")
    print(f"  crashes: {len(crashes)}")
    for r in crashes:
        print(f"    {r.path}: {r.crash}")
    gg_cli = time_gradguard_cli(files)
    print(f"gradguard lint CLI (subprocess): {gg_cli:.1f} s, {lines / gg_cli:,.0f} lines/s")

    if args.skip_torchfix:
        tf_seconds, note, tf_cpu = None, "skipped (--skip-torchfix)", None
    else:
        tf_seconds, note, tf_cpu = time_torchfix(files, args.jobs, args.torchfix_python)
    if tf_seconds is None:
        print(f"\ntorchfix: {note}")
    else:
        print(f"\ntorchfix (--jobs {args.jobs}): {tf_seconds:.1f} s ({tf_cpu:.1f} CPU s), "
              f"{lines / tf_seconds:,.0f} lines/s ({note})")
        print(f"\nratio: gradguard is {tf_seconds / gg_seconds:.1f}x TorchFix's throughput in process, "
              f"{tf_seconds / gg_cli:.1f}x through the CLI; {tf_cpu / gg_cpu:.1f}x in CPU seconds")

    if diags and args.sample:
        rng = random.Random(args.seed)
        sample = sorted(rng.sample(diags, min(args.sample, len(diags))), key=lambda d: d.sort_key())
        print(f"\nsample of {len(sample)} findings (seed {args.seed}) for hand-checking:")
        for d in sample:
            rel = os.path.relpath(d.path, root.parent)
            print(f"  {rel}:{d.line}:{d.col}: {d.code} {d.message}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
