"""Rule registry invariants: unique codes, complete docs, sane metadata."""
from __future__ import annotations

import re
import sys

import pytest

from gradguard._cli.rule import render, table
from gradguard.lint import base
from gradguard.lint.base import Rule, all_rules

SECTIONS = ("## What it does", "## Why is this bad?", "## Example", "Use instead:", "## Fix safety")


def test_codes_are_unique_and_well_formed() -> None:
    rules = all_rules()
    classes = Rule.__subclasses__()
    assert len({c.code for c in classes}) == len(classes) == len(rules)
    for code, r in rules.items():
        assert re.fullmatch(r"GG[124]\d\d", code), code
        assert r.code == code
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", r.name), r.name


def test_names_are_unique() -> None:
    names = [r.name for r in all_rules().values()]
    assert len(names) == len(set(names))


def test_duplicate_code_is_rejected() -> None:
    with pytest.raises(RuntimeError, match="duplicate rule code GG101"):
        type("Dup", (Rule,), {"code": "GG101"})


@pytest.mark.parametrize("code", sorted(all_rules()))
def test_rule_doc_is_complete(code: str) -> None:
    r = all_rules()[code]
    positions = [r.doc.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in positions), f"{code} doc lacks {[s for s, p in zip(SECTIONS, positions) if p < 0]}"
    assert positions == sorted(positions), f"{code} doc sections out of order"
    assert r.doc.count("```python") >= 2, f"{code} needs a bad and a good example"
    assert r.summary and not r.summary.endswith(".")
    assert r.fix_safety in (base.SAFE, base.UNSAFE, base.SOMETIMES, base.NONE)
    assert r.fix_availability in base.AVAILABILITY
    assert (r.fix_availability == base.NEVER) == (r.fix_safety == base.NONE)


@pytest.mark.parametrize("code", sorted(all_rules()))
def test_doc_examples_parse_and_bad_example_is_flagged(code: str) -> None:
    import ast

    from gradguard.lint.engine import lint_source

    r = all_rules()[code]
    blocks = re.findall(r"```python\n(.*?)```", r.doc, re.S)
    for b in blocks:
        ast.parse(b)
    # The "Example" block, with the imports it assumes, triggers the rule.
    imports = {"torch": "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n",
               "jax": "import jax\nimport jax.numpy as jnp\n",
               "tensorflow": "import tensorflow as tf\nimport numpy as np\n"}
    prelude = "".join(imports[f] for f in sorted(r.frameworks))
    bad = blocks[0]
    indented = "".join("    " + line + "\n" for line in bad.splitlines())
    if bad.lstrip().startswith(("class ", "head", "self", "m.")):
        body = bad
    else:
        body = "def example(x, w, fake, ones, opt_d, disc, loss_d, bce, h, m):\n" + indented
    if code == "GG402":
        body = bad.replace("self.act", "act")
    if code == "GG201":
        body = "def init(m):\n    " + bad
    found = {d.code for d in lint_source(prelude + body, "doc.py", [code])}
    if code in ("GG401",):
        module = "class M(nn.Module):\n" + indented.replace("(self, x)", "(self, x: torch.Tensor)")
        found = {d.code for d in lint_source(prelude + module, "doc.py", [code])}
    assert code in found, f"{code}'s own example is not flagged"


def test_rule_cli_render_and_table() -> None:
    text = render("gg107")
    assert text.startswith("# GG107 sequential-inplace-after-saving")
    assert "## Fix safety" in text
    assert table().count("\n| GG") == len(all_rules())


def test_lint_package_does_not_import_torch_or_libcst() -> None:
    import subprocess

    code = ("import sys, gradguard; before = {'torch', 'libcst'} & set(sys.modules); "
            "import gradguard.lint, gradguard._cli.lint, gradguard._cli.rule; "
            "from gradguard.lint import lint_source; "
            "lint_source('import torch\\nx = torch.sigmoid(y)\\nx.mul_(2)\\n'); "
            "print(sorted(({'torch', 'libcst'} & set(sys.modules)) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
