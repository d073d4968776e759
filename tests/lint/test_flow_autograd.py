"""The data-flow fixtures run on real autograd (CPU, double precision).

Every ``bug_<name>`` in ``fixtures/GG*/flow_*.py`` (and the GG111/GG112 cases) has a
``fixed_<name>`` twin.  Stock PyTorch must reject the bug -- backward (or the write
itself) raises, or ``gradcheck`` finds its gradients wrong -- and the fixed version
must pass ``gradcheck``: its autograd gradients match finite differences, the
reference.  The lint side of the same files is checked by test_fixtures.py (every
``# GGxxx`` line is reported, nothing else is)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).parent / "fixtures"
FILES = sorted(ROOT.glob("GG*/flow_*.py")) + [ROOT / "GG111" / "case.py", ROOT / "GG112" / "case.py"]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"flow_{path.parent.name}_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CASES = [(p, name[4:]) for p in FILES for name in sorted(vars(_load(p))) if name.startswith("bug_")]


def _check(fn, args) -> bool:
    return torch.autograd.gradcheck(lambda *a: fn(*a), args, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("path,case", CASES, ids=[f"{p.parent.name}/{p.stem}:{c}" for p, c in CASES])
def test_bug_fails_on_stock_pytorch_and_fix_matches_reference(path: Path, case: str) -> None:
    mod = _load(path)
    bug, fixed = getattr(mod, f"bug_{case}"), getattr(mod, f"fixed_{case}")
    assert _check(fixed, mod.inputs())
    with pytest.raises(RuntimeError) as info:  # GradcheckError is a RuntimeError too
        _check(bug, mod.inputs())
    message = str(info.value)
    assert ("modified by an inplace operation" in message or "Jacobian mismatch" in message
            or "leaf Variable" in message or "out=... arguments" in message or "returns multiple views" in message
            or "view of a leaf" in message), message


def test_every_flow_file_has_cases() -> None:
    for p in FILES:
        mod = _load(p)
        bugs = {n[4:] for n in vars(mod) if n.startswith("bug_")}
        fixes = {n[6:] for n in vars(mod) if n.startswith("fixed_")}
        assert bugs and bugs == fixes, p.name
