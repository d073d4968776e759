"""The HTML report: one self-contained page per session, checked by parsing it."""
from __future__ import annotations

import html.parser
import os
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn as nn
from helpers import line_of

import gradguard
from gradguard._explain.html import write_html
from gradguard._explain.text import render_conflict

HERE = os.path.abspath(__file__)


class _Page(html.parser.HTMLParser):
    """Collects sections, their text per element class, code rows, SVGs and links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[dict] = []
        self.stack: list[tuple[str, dict]] = []
        self.urls: list[str] = []
        self.svg_depth = 0
        self.svg_text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "section":
            self.sections.append({"id": attrs["id"], "pre": "", "rows": [], "svg": 0,
                                  "svg_text": [], "tables": []})
        if tag == "table" and self.sections:
            self.sections[-1]["tables"].append(attrs.get("class", ""))
        if tag == "tr" and self.sections:
            self.sections[-1]["rows"].append((self.sections[-1]["tables"][-1],
                                              int(attrs["data-line"]), "hit" in attrs["class"],
                                              []))
        if tag == "svg":
            self.svg_depth += 1
            if self.sections:
                self.sections[-1]["svg"] += 1
        self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        while self.stack:
            open_tag, _ = self.stack.pop()
            if open_tag == tag:
                break
        if tag == "svg":
            self.svg_depth -= 1

    def handle_data(self, data):
        if not self.sections or not self.stack:
            return
        section = self.sections[-1]
        tag, attrs = self.stack[-1]
        if tag == "pre" and attrs.get("class") == "report":
            section["pre"] += data
        elif tag == "td" and attrs.get("class") != "ln" and section["rows"]:
            section["rows"][-1][3].append(data)
        elif self.svg_depth and tag == "text":
            section["svg_text"].append(data)


def _session():
    lin = nn.Linear(3, 4)
    x = torch.randn(2, 3)
    with gradguard.detect(on_conflict="record") as session:
        h = torch.sigmoid(lin(x))  # SAVE-html
        h.data.zero_()  # WRITE-html
        h.sum().backward()
    return session


def test_html_report_has_each_conflicts_text_sources_and_picture(tmp_path):
    session = _session()
    (conflict,) = session.conflicts
    path = write_html(session, tmp_path / "report.html")
    text = path.read_text()
    page = _Page()
    page.feed(text)
    assert text.startswith("<!DOCTYPE html>")
    assert [u for u in page.urls if not u.startswith("#")] == []  # nothing external
    (section,) = page.sections
    assert section["id"] == "conflict-1"
    assert section["pre"] == render_conflict(conflict)  # the text report, unescaped
    write_line, save_line = line_of("WRITE-html"), line_of("SAVE-html")
    for table, line in (("code write", write_line), ("code saved", save_line)):
        rows = [(n, hit, "".join(t)) for tab, n, hit, t in section["rows"] if tab == table]
        assert [n for n, _, _ in rows] == list(range(line - 3, line + 4))
        assert [n for n, hit, _ in rows if hit] == [line]
        with open(HERE) as f:
            source = f.read().splitlines()
        assert [t for _, _, t in rows] == source[line - 4:line + 3]
    assert section["svg"] == 1
    assert {"SigmoidBackward0", "write: Tensor.zero_", "AddmmBackward0"} <= set(
        section["svg_text"])
    svg = text[text.index("<svg"):text.index("</svg>") + 6]
    ET.fromstring(svg)  # the embedded picture is well-formed XML


def test_html_report_of_a_clean_session_and_bad_input(tmp_path):
    with gradguard.detect() as session:
        torch.randn(2, requires_grad=True).exp().sum().backward()
    page = _Page()
    page.feed(write_html(session, tmp_path / "clean.html").read_text())
    assert page.sections == []
    assert "No conflicts found." in (tmp_path / "clean.html").read_text()
    with pytest.raises(TypeError, match="DetectSession"):
        write_html(object(), tmp_path / "x.html")
    with pytest.raises(TypeError, match="file path"):
        write_html(session, 42)


def test_html_escapes_source_text(tmp_path):
    x = torch.randn(3, requires_grad=True)
    with gradguard.detect(on_conflict="record") as session:
        y = x.exp(); y.data.mul_(2) if 1 < 2 and "<b>" else None  # noqa: E702  # WRITE-escape
        y.sum().backward()
    text = write_html(session, tmp_path / "e.html").read_text()
    assert "&quot;&lt;b&gt;&quot;" in text and '"<b>"' not in text


def test_html_shows_the_origin_lines_and_the_writes_timeline(tmp_path):
    x = torch.randn(4, requires_grad=True)
    with gradguard.detect(on_conflict="record") as session:
        w = torch.randn(3, requires_grad=True)  # LEAF-html
        with pytest.raises(RuntimeError, match="a leaf Variable"):
            w += 1
        big = x * 1
        y = big.pow(2)  # SAVE-twice
        big *= 2  # WRITE-1
        big *= 3  # WRITE-2
        with pytest.raises(gradguard.InplaceConflictError):
            y.sum().backward()
    leaf, twice = session.conflicts
    text = write_html(session, tmp_path / "report.html").read_text()
    page = _Page()
    page.feed(text)
    first, second = page.sections
    line = line_of("LEAF-html")
    rows = [(n, hit) for tab, n, hit, _ in first["rows"] if tab == "code origin"]
    assert [n for n, hit in rows if hit] == [line]
    assert ("<h3>Origin: leaf `w` (requires grad): "
            f"<code>{HERE}:{line}</code> in <code>"
            "test_html_shows_the_origin_lines_and_the_writes_timeline</code></h3>") in text
    one, two = line_of("WRITE-1"), line_of("WRITE-2")
    fn = "test_html_shows_the_origin_lines_and_the_writes_timeline"
    assert ('<h3>Writes: 2 writes overlapped the saved bytes, in order</h3><ol class="writes">'
            f"<li><code>*=</code> at <code>{HERE}:{one}</code> in <code>{fn}</code> (version 1 "
            "after it; the write this report names)<br><code class=\"source\">big *= 2  "
            "# WRITE-1</code></li>"
            f"<li><code>*=</code> at <code>{HERE}:{two}</code> in <code>{fn}</code> (version 2 "
            "after it)<br><code class=\"source\">big *= 3  # WRITE-2</code></li></ol>") in text
    assert second["pre"] == render_conflict(twice)
    assert "Writes:" not in text[:text.index('id="conflict-2"')]  # one write: no timeline
