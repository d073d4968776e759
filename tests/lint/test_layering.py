"""Import direction of the static half: lint depends only on the torch-free findings
model and gradguard.errors, and no import cycle runs through lint or its CLI modules."""
from __future__ import annotations

import ast
from pathlib import Path

import gradguard

SRC = Path(gradguard.__file__).parent
OWN_CLI = ("gradguard._cli.lint", "gradguard._cli.fix", "gradguard._cli.fix_report")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                for a in node.names:
                    edges.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_lint_imports_only_findings_and_errors() -> None:
    graph = _graph()
    for name, edges in graph.items():
        if name == "gradguard.lint" or name.startswith("gradguard.lint."):
            bad = {e for e in edges if not e.startswith(("gradguard.lint", "gradguard._findings", "gradguard.errors"))}
            assert not bad, f"{name} imports {sorted(bad)}"
    assert not graph["gradguard._findings.twins"], "twins.py is stdlib only"


def test_no_import_cycles_through_lint() -> None:
    graph = _graph()
    ours = [n for n in graph if n.startswith("gradguard.lint") or n in OWN_CLI or n == "gradguard._findings.twins"]

    def reach(start: str) -> set:
        seen, stack = set(), list(graph[start])
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(graph.get(n, ()))
        return seen

    cycles = [n for n in ours if n in reach(n)]
    assert not cycles, f"import cycles through {cycles}"


def test_own_cli_modules_do_not_import_main() -> None:
    graph = _graph()
    for name in OWN_CLI:
        assert "gradguard._cli.main" not in graph[name]
