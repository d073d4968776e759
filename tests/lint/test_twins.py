"""gradguard._findings.twins: the one table of out-of-place twins, checked against real torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from gradguard._findings import twins

torch = pytest.importorskip("torch")
F = torch.nn.functional

METHOD_CASES = [
    ("add_", "add"), ("relu_", "relu"), ("mul_", "mul"), ("clamp_", "clamp"), ("masked_fill_", "masked_fill"),
    ("index_put_", "index_put"), ("sigmoid_", "sigmoid"),
    # no out-of-place *method* exists for these
    ("zero_", None), ("fill_", None), ("copy_", None), ("normal_", None), ("uniform_", None),
    ("set_", None), ("resize_", None), ("requires_grad_", None), ("detach_", None), ("not_a_method_", None),
]


@pytest.mark.parametrize("method,expected", METHOD_CASES)
def test_twin_method(method: str, expected: str) -> None:
    assert twins.twin_method(method) == expected


def test_every_method_twin_exists_on_tensor() -> None:
    missing = [f"{m} -> {t}" for m, t in twins.METHOD_TWINS.items()
               if not hasattr(torch.Tensor, t) or not hasattr(torch.Tensor, m)]
    assert not missing


def test_every_function_twin_exists() -> None:
    def resolve(q: str):
        obj = torch
        for part in q.split(".")[1:]:
            obj = getattr(obj, part, None)
        return obj

    missing = [f"{f} -> {t}" for f, t in twins.FUNCTION_TWINS.items() if resolve(f) is None or resolve(t) is None]
    assert not missing


@pytest.mark.parametrize("method", sorted(twins.FRESH_BUFFER))
def test_fresh_buffer_methods_have_no_method_twin(method: str) -> None:
    # The old runtime FIX proposed `x.copy(...)`, `x.zero()`...: they do not exist.
    assert twins.twin_method(method) is None
    assert not hasattr(torch.Tensor, method[:-1]) or method in ("bernoulli_",)


STATEMENT_CASES = [
    ("h.mul_(2)", "Tensor.mul_", "h = h.mul(2)"),
    ("    h.mul_(2)  # scale", "Tensor.mul_", "h = h.mul(2)"),
    ("self.h.add_(x, alpha=0.5)", "Tensor.add_", "self.h = self.h.add(x, alpha=0.5)"),
    ("x += y", "+=", "x = x + y"),
    ("x -= a - b", "-=", "x = x - (a - b)"),
    ("x *= a + b", "*=", "x = x * (a + b)"),
    ("x += a * b", "+=", "x = x + a * b"),
    ("x /= 2 ** k", "/=", "x = x / 2 ** k"),
    ("F.relu(h, inplace=True)", "torch.relu_", "h = F.relu(h)"),
    ("F.leaky_relu(h, 0.2, True)", "torch.leaky_relu_", "h = F.leaky_relu(h, 0.2)"),
    ("h = F.relu(h, inplace=True)", "torch.relu_", "h = F.relu(h)"),
    ("torch.relu_(x)", "torch.relu_", "x = torch.relu(x)"),
    ("F.elu_(x, 0.5)", "torch.nn.functional.elu_", "x = F.elu(x, 0.5)"),
    ("torch.add(a, b, out=a)", "torch.add(out=)", "a = torch.add(a, b)"),
    ("torch.clamp(alpha, 0, 1, out=alpha)", "torch.clamp(out=)", "alpha = torch.clamp(alpha, 0, 1)"),
    ("x.zero_()", "Tensor.zero_", "x = torch.zeros_like(x)"),
    ("x.fill_(0.5)", "Tensor.fill_", "x = torch.full_like(x, 0.5)"),
    ("x.fill_(-1)", "Tensor.fill_", "x = torch.full_like(x, -1)"),
    ("x.fill_(v)", "Tensor.fill_", "x = torch.empty_like(x).fill_(v)"),
    ("x.copy_(src)", "Tensor.copy_", "x = torch.empty_like(x).copy_(src)"),
    ("x.normal_(0, 0.02)", "Tensor.normal_", "x = torch.empty_like(x).normal_(0, 0.02)"),
    ("y = x.mul(2).add_(1)", "Tensor.add_", "y = x.mul(2).add(1)"),
    # no faithful one-line twin
    ("x[0] = 1", "Tensor.__setitem__", None),
    ("x[:, 1] += y", "Tensor.__setitem__", None),
    ("x[i].mul_(2)", "Tensor.mul_", None),
    ("w.data.mul_(0.5)", "Tensor.mul_", None),
    ("w.data += 1", "+=", None),
    ("nn.init.normal_(w, 0, 0.02)", "Tensor.normal_", None),
    ("x.resize_(3)", "Tensor.resize_", None),
    ("x.set_(y)", "Tensor.set_", None),
    ("return F.relu(x, inplace=True)", "torch.relu_", None),
    ("for i in range(3):", "Tensor.add_", None),
    ("", "Tensor.add_", None),
    ("x @= w", "@=", None),
]


@pytest.mark.parametrize("source,op,expected", STATEMENT_CASES, ids=[c[0] or "<empty>" for c in STATEMENT_CASES])
def test_twin_statement(source: str, op: str, expected: str) -> None:
    assert twins.twin_statement(source, op) == expected


# Run the in-place line and its twin on the same inputs (same RNG seed): the same values.
RUN_CASES = [
    "x.mul_(y)", "x += y", "x -= y - 1", "x.clamp_(min=0.1)", "F.relu(x, inplace=True)", "torch.sigmoid_(x)",
    "x.zero_()", "x.fill_(0.5)", "x.fill_(v)", "x.copy_(src)", "x.normal_(0, 0.02)", "x.uniform_()",
    "torch.add(x, y, out=x)", "x.masked_fill_(x > 0, 2.0)", "x.bernoulli_(0.5)",
]


@pytest.mark.parametrize("line", RUN_CASES)
def test_twin_computes_the_same_values(line: str) -> None:
    twin = twins.twin_statement(line, "")
    assert twin is not None

    def run(code: str) -> torch.Tensor:
        torch.manual_seed(0)
        env = {"torch": torch, "F": F, "x": torch.randn(3, 4, dtype=torch.float64),
               "y": torch.randn(3, 4, dtype=torch.float64), "v": torch.tensor(1.5), "src": torch.randn(4)}
        exec(code, env)
        return env["x"]

    a, b = run(line), run(twin)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b)


def test_twin_does_not_write_in_place() -> None:
    # The point of the twin: the tensor an op saved is left alone.
    for line in RUN_CASES:
        x = torch.randn(3, 4, dtype=torch.float64)
        env = {"torch": torch, "F": F, "x": x, "y": torch.randn(3, 4, dtype=torch.float64),
               "v": torch.tensor(1.5), "src": torch.randn(4)}
        before = x._version
        exec(twins.twin_statement(line, ""), env)
        assert x._version == before, line


def test_twins_module_is_stdlib_only() -> None:
    code = ("import sys, gradguard._findings.twins as t; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'libcst')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    tree = ast.parse(Path(twins.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "ast", "typing"}
