"""`gradguard run --mode protect`, `--graph` and `--html` on the shipped examples.

Under protect every buggy example must run to its end, print what the same script prints
with every saved tensor snapshotted at save time (the reference no write can corrupt), and
say what it copied and where.
"""
from __future__ import annotations

import json
import runpy
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import line_of

from gradguard._cli.main import main
from gradguard._core.snapshot import snapshot_saved_tensors

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BUGGY = {  # example -> the marker of its write line
    "gan_step_order": "BUG: changes disc's weights while loss_g still needs them",
    "sigmoid_relu_inplace": "BUG with inplace=True: writes over g",
    "attention_mask_inplace": "BUG: zeroes padded keys in the saved output",
    "weight_norm_data": "a write autograd cannot see",
}


@pytest.mark.parametrize("name", BUGGY)
def test_protect_mode_runs_each_buggy_example_like_the_snapshot_reference(
        name, tmp_path, capsys, monkeypatch, example_modules):
    path = str(EXAMPLES / f"{name}.py")
    monkeypatch.setattr(sys, "argv", [path])
    with snapshot_saved_tensors():
        runpy.run_path(path, run_name="__main__")
    reference = capsys.readouterr().out
    assert reference.count("step ") == 3

    report = tmp_path / "r.json"
    assert main(["run", "--mode", "protect", "--json", str(report), path]) == 0
    out, err = capsys.readouterr()
    assert out == reference
    assert "Traceback" not in err
    assert "repaired: gradguard.protect kept the saved bytes" in err
    data = json.loads(report.read_text())
    assert data["conflicts"] and all(c["repaired"] for c in data["conflicts"])
    protect = data["protect"]
    assert protect["copies"] >= 1 and protect["copied_bytes"] > 0
    site = protect["copy_sites"][0]
    assert (site["write"]["file"], site["write"]["line"]) == (path, line_of(BUGGY[name], path))
    assert f"gradguard: protect copied {protect['copied_bytes']} bytes" in err


def test_protect_mode_on_a_correct_script_copies_nothing(capsys, example_modules):
    path = str(EXAMPLES / "gan_step_order.py")
    assert main(["run", "--mode", "protect", path, "--fixed"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "gradguard: no in-place conflicts found",
        "gradguard: protect copied 0 bytes in 0 copies (nothing saved for backward was "
        "overwritten)",
    ]


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_graph_and_html_outputs(tmp_path, capsys, example_modules):
    path = str(EXAMPLES / "weight_norm_data.py")
    svg, html = tmp_path / "conflict.svg", tmp_path / "report.html"
    assert main(["run", "--graph", str(svg), "--html", str(html), path]) == 1
    capsys.readouterr()
    texts = " ".join(t.text or "" for t in ET.parse(svg).iter() if t.text)
    assert "MmBackward0" in texts and "Tensor.div_" in texts
    assert "model.head.weight" in texts
    page = _Text()
    page.feed(html.read_text())
    text = "".join(page.text)
    assert "svg" in page.tags and "script" not in page.tags
    assert "SUMMARY: gradguard: saved-tensor-mutated" in text
    assert "weight.data.div_(weight.data.norm(dim=1, keepdim=True))" in text


@pytest.mark.parametrize("argv, message", [
    (["--graph", "x.png"], "--graph"),
    (["--html", "x.txt"], "expected a path ending in .html"),
    (["--mode", "repair"], "expected one of detect, protect"),
])
def test_bad_output_options_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", *argv, str(EXAMPLES / "weight_norm_data.py")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
