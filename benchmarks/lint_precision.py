"""Precision of ``gradguard lint`` on real libraries: lint their sources, count
findings per rule, check nothing crashes, and print a seeded random sample of
findings (with context) for hand-checking; the verdicts live in docs/lint-precision.md.

    python benchmarks/lint_precision.py --src /work/scratch/src [--sample 45] [--seed 13]

Prints a simple random sample (seeded) of ``--sample`` findings over all default-rule
findings, then every GG1xx hazard finding not in it (a census: the rare hazards would
otherwise be drowned by the many GG201 advice findings).

``--src`` holds the unzipped wheels (lint never imports them, so nothing is installed)::

    pip download --no-deps -d /work/scratch/wheels transformers timm pytorch_lightning \\
        lightning_fabric peft diffusers
    for w in /work/scratch/wheels/*.whl; do unzip -q -o "$w" -d /work/scratch/src/$(basename "$w" .whl); done

Keep the sources out of the repository.  Exit status 1 if any file crashed the linter.
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path

LIBRARIES = ("transformers", "timm", "pytorch_lightning", "lightning_fabric", "peft", "diffusers")


def library_roots(src: Path) -> dict:
    """Library name -> its package directory inside the unzipped wheels under ``src``."""
    roots = {}
    for lib in LIBRARIES:
        hits = sorted(p for p in src.glob(f"*/{lib}") if p.is_dir() and (p / "__init__.py").exists())
        if hits:
            roots[lib] = hits[-1]
    return roots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="directory with the unzipped wheels")
    parser.add_argument("--sample", type=int, default=45)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--context", type=int, default=3, help="source lines shown around each sampled finding")
    args = parser.parse_args()

    from gradguard.lint.engine import lint_file, resolve_selection

    roots = library_roots(args.src)
    missing = [lib for lib in LIBRARIES if lib not in roots]
    if missing:
        print(f"lint_precision: not found under {args.src}: {', '.join(missing)}", file=sys.stderr)
        return 2
    codes = resolve_selection()  # the default rule set, as `gradguard lint` runs it
    all_diags, crashes = [], []
    for lib, root in roots.items():
        files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        start = time.perf_counter()
        results = [lint_file(p, codes, str(p.relative_to(root.parent))) for p in files]
        elapsed = time.perf_counter() - start
        diags = [d for r in results for d in r.diagnostics if not d.code.startswith("E")]
        crashes += [r for r in results if r.crash]
        by_code = collections.Counter(d.code for d in diags)
        print(f"{lib}: {len(files)} files, {elapsed:.1f} s, {len(diags)} findings "
              f"({', '.join(f'{c} {n}' for c, n in sorted(by_code.items())) or 'none'})")
        all_diags += [(lib, root, d) for d in diags]
    print(f"crashes: {len(crashes)}")
    for r in crashes:
        print(f"  {r.path}: {r.crash}")
    total = collections.Counter(d.code for _, _, d in all_diags)
    print(f"total: {len(all_diags)} findings ({', '.join(f'{c} {n}' for c, n in sorted(total.items()))})")

    rng = random.Random(args.seed)
    sample = rng.sample(all_diags, min(args.sample, len(all_diags)))
    sample.sort(key=lambda t: (t[0], t[2].sort_key()))
    chosen = {id(t[2]) for t in sample}
    census = [t for t in all_diags if t[2].code.startswith("GG1") and id(t[2]) not in chosen]
    print(f"\nsample of {len(sample)} findings (seed {args.seed}), then the {len(census)} other GG1xx findings:")
    for i, (_lib, root, d) in enumerate(sample + census, 1):
        if i == len(sample) + 1:
            print("\n--- GG1xx census (not in the sample) ---")
        print(f"\n[{i}] {d.path}:{d.line} {d.code} {d.message}")
        lines = (root.parent / d.path).read_text(encoding="utf-8", errors="replace").splitlines()
        for n in range(max(1, d.line - args.context), min(len(lines), d.line + args.context) + 1):
            print(f"  {'>' if n == d.line else ' '}{n:5d} {lines[n - 1]}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
