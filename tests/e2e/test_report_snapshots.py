"""Snapshots of the text report `gradguard run` prints, one per buggy example (plus one in
colour). A report holds no addresses, timings or values, so it is the same on every run;
only the examples' directory differs between checkouts and is written as `<examples>`.

After an intended change to the report, regenerate and review the diff:

    GRADGUARD_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest -q tests/e2e/test_report_snapshots.py
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from gradguard._cli.main import main

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "examples"
SNAPSHOTS = HERE / "snapshots"
UPDATE = os.environ.get("GRADGUARD_UPDATE_SNAPSHOTS") == "1"
MARK = "(gradguard: the report follows)\n"  # ends the traceback of a fatal conflict


def report_of(name: str, capsys, *options: str) -> str:
    """The report `gradguard run` prints for the example (after its traceback, if any)."""
    before = set(sys.modules)
    try:
        main(["run", *options, str(EXAMPLES / f"{name}.py")])
    finally:
        for module in set(sys.modules) - before:
            if module in ("example_utils", name):
                del sys.modules[module]
    err = capsys.readouterr().err
    report = err.split(MARK, 1)[1] if MARK in err else err
    # A conflict the script ran on past had its SUMMARY line streamed when it was found
    # (a fatal one ends the script instead): those lines come first, and the snapshot is
    # the report at exit.
    lines = report.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "==== gradguard: " in line)
    streamed, report = lines[:start], "".join(lines[start:])
    summaries = [line for line in lines[start:] if "SUMMARY: gradguard: " in line]
    assert streamed == ([] if MARK in err else summaries)
    return report.replace(str(EXAMPLES), "<examples>")


def check(snapshot: str, text: str) -> None:
    path = SNAPSHOTS / snapshot
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}; run with GRADGUARD_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text()


@pytest.mark.parametrize("name", ["gan_step_order", "sigmoid_relu_inplace",
                                  "attention_mask_inplace", "weight_norm_data"])
def test_report_snapshot(name, capsys):
    text = report_of(name, capsys)
    assert text.startswith("==== gradguard: ")
    assert not re.search(r"0x[0-9a-f]{4,}|\d+\.\d+ ?m?s\b", text)  # no addresses or timings
    check(f"{name}.txt", text)


def test_report_snapshot_in_colour(capsys):
    check("weight_norm_data.color.txt", report_of("weight_norm_data", capsys, "--color", "always"))


def test_report_is_the_same_on_a_second_run(capsys):
    first = report_of("gan_step_order", capsys)
    assert report_of("gan_step_order", capsys) == first


def test_readme_quickstart_shows_the_real_report():
    """The README's sample is this snapshot, with the examples' path shortened."""
    quickstart = (HERE.parents[1] / "README.md").read_text().split("## Quickstart", 1)[1]
    sample = re.search(r"```text\n(.*?)```", quickstart, flags=re.S).group(1)
    report = (SNAPSHOTS / "weight_norm_data.txt").read_text()
    assert sample.endswith(report.replace("<examples>/", "examples/"))
