"""`gradguard run` on a torch.compile'd training loop: compile time, step time, results.

Runs the same small training script twice per round, as ``python train.py`` and as
``gradguard run train.py``, each in a fresh process with a fresh, empty inductor cache
(so every run really compiles), and reports the first step (which compiles), the median
later step, and whether the final parameters are bit-identical.

    python benchmarks/run_compile.py [--backend inductor|aot_eager] [--rounds 2] [--steps 30]

Needs a C++ compiler for the inductor backend.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TRAIN = '''\
import sys, time
import torch

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                            torch.nn.GELU(), torch.nn.Linear(256, 1))
compiled = torch.compile(model, backend=sys.argv[2])
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
times = []
for step in range(int(sys.argv[3])):
    x, y = torch.randn(64, 64), torch.randn(64, 1)
    start = time.perf_counter()
    loss = torch.nn.functional.mse_loss(compiled(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - start)
torch.save({"params": [p.detach() for p in model.parameters()], "times": times}, sys.argv[1])
'''


def run_once(script: Path, out: Path, backend: str, steps: int, guarded: bool) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
        prefix = [sys.executable, "-m", "gradguard", "run"] if guarded else [sys.executable]
        subprocess.run([*prefix, str(script), str(out), backend, str(steps)], env=env,
                       check=guarded is False, capture_output=True)
    return torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "train.py"
        script.write_text(TRAIN)
        results: dict[str, list] = {"plain": [], "gradguard run": []}
        for _ in range(args.rounds):
            for name in results:
                out = Path(tmp) / f"{name.replace(' ', '_')}.pt"
                results[name].append(run_once(script, out, args.backend, args.steps,
                                              guarded=name != "plain"))
    print(f"backend={args.backend} steps={args.steps} rounds={args.rounds} "
          f"torch {torch.__version__}")
    print("| run | first step (compiles) s | later steps median ms |")
    print("|---|---|---|")
    for name, runs in results.items():
        first = ", ".join(f"{r['times'][0]:.2f}" for r in runs)
        later = ", ".join(f"{statistics.median(r['times'][1:]) * 1e3:.3f}" for r in runs)
        print(f"| {name} | {first} | {later} |")
    reference = results["plain"][0]["params"]
    same = all(torch.equal(a, b) for runs in results.values() for r in runs
               for a, b in zip(reference, r["params"], strict=True))
    print(f"final parameters bit-identical across all runs: {same}")


if __name__ == "__main__":
    main()
