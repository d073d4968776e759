"""The architecture, enforced: which package may import which, no import cycles, and the
torch-free half really free of torch.

Layers, bottom up: ``errors``; the torch-free findings model ``_findings``; the neutral core
``_core``; the capabilities (``_detect``; ``_protect`` and ``_verify`` on top of it); the
torch-free renderers ``_explain`` and the linter ``lint``, which know only the findings
model; and the entry points (``_cli``, ``integrations``, ``pytest_plugin``, ``__init__``).
Imports inside functions count: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "gradguard"

# package -> the gradguard packages it may import (besides itself)
ALLOWED = {
    "errors": set(),
    "_findings": {"errors"},
    "_core": {"errors", "_findings"},
    "_explain": {"errors", "_findings"},
    "lint": {"errors", "_findings"},
    "_detect": {"errors", "_findings", "_core", "_explain"},
    "_protect": {"errors", "_findings", "_core", "_explain", "_detect"},
    "_verify": {"errors", "_findings", "_core", "_explain", "_detect"},
    "_readonly": {"errors", "_findings", "_core", "_explain"},
    "_xray": {"errors", "_findings", "_core", "_explain"},
}
ENTRY_POINTS = {"__init__", "__main__", "_cli", "integrations", "pytest_plugin"}
TORCH_FREE = ["gradguard.errors", "gradguard._findings.model", "gradguard._findings.kinds",
              "gradguard._findings.schema", "gradguard._findings.nodes",
              "gradguard._explain.text", "gradguard._explain.picture",
              "gradguard._explain.html", "gradguard.lint", "gradguard._cli.rule",
              "gradguard._cli.lint", "gradguard._cli.fix", "gradguard._cli.main"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every gradguard module this file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: no dependency at run time
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gradguard"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            if not base.startswith("gradguard"):
                continue
            for alias in node.names:  # `from gradguard._core import sites` names a module
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _exists(candidate) else base)
    found.discard(name)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").exists() or (SRC / rel / "__init__.py").exists()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def test_the_graph_was_read():
    assert "gradguard._core.runtime" in GRAPH and "gradguard._detect.session" in GRAPH
    assert "gradguard._core.registry" in GRAPH["gradguard._core.runtime"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_follow_the_layers(module):
    package = _package(module)
    if package in ENTRY_POINTS:
        return
    assert package in ALLOWED, f"{module}: package {package!r} has no place in the layers"
    for target in sorted(GRAPH[module]):
        other = _package(target)
        if other == package:
            continue
        assert other in ALLOWED[package], f"{module} imports {target}: {package} may not use {other}"


def test_no_import_cycles():
    """Between modules (lazy imports included): a cycle hidden in a function is a cycle."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            # a package's __init__ re-exporting its modules is not a cycle with them
            if state.get(nxt) == 1 and not nxt == node.rpartition(".")[0]:
                cycle = path[path.index(nxt):] + [nxt]
                if not any(m == "gradguard" for m in cycle):  # lazy public re-exports
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def test_the_torch_free_half_imports_no_torch():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in TORCH_FREE)
            + "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            + "print(bad)\nraise SystemExit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
