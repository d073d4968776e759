"""The catalogue of runtime kinds: every GGR code has a complete doc, and its example
really produces that kind under gradguard while its fixed twin produces nothing."""
from __future__ import annotations

import pytest
import torch

import gradguard
from gradguard._cli.main import main
from gradguard._findings.kinds import BY_CODE, CATALOGUE

KINDS = sorted(CATALOGUE.values(), key=lambda k: k.code)


def _run(source: str, **options):
    """Execute an example the way a user's script runs, under detect(record)."""
    session = gradguard.detect(on_conflict="record", **options)
    raised = None
    with session:
        try:
            exec(compile(source, "<example>", "exec"), {"__name__": "__example__"})
        except Exception as exc:  # noqa: BLE001 - the kind's example may end in an error
            raised = exc
    return session, raised


def test_codes_and_slugs_are_unique_and_stable():
    assert len(BY_CODE) == len(CATALOGUE) == 11
    assert all(k.code.startswith("GGR") and len(k.code) == 6 for k in KINDS)
    assert BY_CODE["GGR101"].slug == "saved-tensor-mutated"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.code)
def test_doc_has_every_section(kind):
    doc = kind.doc
    for section in ("## What it does", "## Why is this bad?", "## Example", "## Fix"):
        assert section in doc, section
    assert kind.example.source.strip() in doc and kind.example.fixed.strip() in doc


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.code)
def test_example_produces_its_kind(kind):
    session, raised = _run(kind.example.source, **kind.example.options)
    assert [c.kind for c in session.conflicts] == [kind.slug], session.report()
    conflict = session.conflicts[0]
    assert conflict.code == kind.code and conflict.fix and conflict.detail
    if kind.example.raises is None:
        assert raised is None, raised
    else:
        assert type(raised).__name__ == kind.example.raises
        assert isinstance(raised, RuntimeError)  # what stock PyTorch raises, too


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.code)
def test_fixed_example_produces_nothing(kind):
    session, raised = _run(kind.example.fixed, **kind.example.options)
    assert raised is None and session.conflicts == [], session.report()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.code)
def test_stock_pytorch_on_the_example(kind):
    """The kinds PyTorch reports, it reports; the silent ones it runs without a word."""
    try:
        exec(compile(kind.example.source, "<example>", "exec"), {"__name__": "__example__"})
    except RuntimeError as exc:
        assert kind.pytorch_message is not None, f"stock raised {exc}"
        assert str(exc).split(".")[0][:40] in kind.pytorch_message or kind.code == "GGR101"
    else:
        assert kind.pytorch_message is None


@pytest.mark.parametrize("code", sorted(BY_CODE))
def test_rule_command_prints_the_doc(code, capsys):
    assert main(["rule", code]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {code} {BY_CODE[code].slug}") and "## Why is this bad?" in out


def test_torch_is_real_here():
    assert torch.autograd.grad is not None
