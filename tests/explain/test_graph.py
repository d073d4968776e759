"""Pictures of conflicts: `session.draw(path)` renders the autograd graph around each
conflict (saving node, saved tensor, the write, producer, inputs, consumers) as SVG."""
from __future__ import annotations

import gc
import json
import os
import shutil
import weakref
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn as nn
from helpers import line_of

import gradguard
from gradguard._core.runtime import runtime
from gradguard._explain.picture import to_dot

SVG = "{http://www.w3.org/2000/svg}"
HERE = os.path.basename(__file__)


def _conflicts_of_planted_data_write():
    torch.manual_seed(0)
    lin = nn.Linear(3, 4)
    w = torch.randn(4, requires_grad=True)
    x = torch.randn(5, 3)
    with gradguard.detect(on_conflict="record") as session:
        h = torch.tanh(lin(x))  # SAVE-tanh
        out = (h * w).sum()  # SAVE-mul
        h.data.mul_(0.5)  # WRITE-graph
        out.backward()
    return session


def _parse(path):
    """{conflict group id: {"nodes": {node id: (role, [texts], classes)}, "edges": [...]}}"""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    pictures = {}
    for group in root.iter(f"{SVG}g"):
        if group.get("class") != "conflict":
            continue
        nodes, edges, boxes = {}, [], []
        for g in group.iter(f"{SVG}g"):
            cls = g.get("class", "")
            if cls.startswith("node"):
                texts = [t.text for t in g.findall(f"{SVG}text")]
                nodes[g.get("id")] = (g.get("data-role"), texts, cls.split())
                rect = g.find(f"{SVG}rect")
                boxes.append(tuple(float(rect.get(k)) for k in ("x", "y", "width", "height")))
            elif cls == "edge":
                edges.append((g.get("data-src"), g.get("data-dst"), g.get("data-role")))
        pictures[group.get("id")] = {"nodes": nodes, "edges": edges, "boxes": boxes}
    return pictures


def _by_role(picture, role):
    return [texts for r, texts, _ in picture["nodes"].values() if r == role]


def test_draw_renders_the_graph_around_a_real_conflict(tmp_path):
    session = _conflicts_of_planted_data_write()
    assert len(session.conflicts) == 2  # tanh saved its output h; mul saved its input h
    path = session.draw(tmp_path / "conflict.svg", engine="python")
    pictures = _parse(path)
    assert len(pictures) == 2
    write_site = f"{HERE}:{line_of('WRITE-graph')}"
    by_saver = {_by_role(p, "saver")[0][0]: p for p in pictures.values()}
    assert set(by_saver) == {"MulBackward0", "TanhBackward0"}

    mul = by_saver["MulBackward0"]
    (saver,) = _by_role(mul, "saver")
    assert f"{HERE}:{line_of('SAVE-mul')}" in saver and "saved by mul" in saver
    (write,) = _by_role(mul, "write")
    assert write[0] == "write: Tensor.mul_" and "through .data" in write and write_site in write
    (tensor,) = _by_role(mul, "tensor")
    assert "f32[5,4] cpu v0" in tensor and "saved at v0, version unchanged" in tensor
    assert [t[0] for t in _by_role(mul, "producer")] == ["TanhBackward0"]  # made h
    assert ["AccumulateGrad", "leaf", "f32[4] cpu"] in _by_role(mul, "leaf")  # w, other input
    assert [t[0] for t in _by_role(mul, "consumer")] == ["SumBackward0"]  # consumed h * w
    ids = {role: nid for nid, (role, _, _) in mul["nodes"].items()
           if role in ("saver", "tensor", "write")}
    assert (ids["write"], ids["tensor"], "write") in mul["edges"]
    assert (ids["tensor"], ids["saver"], "saved") in mul["edges"]
    highlighted = {role for role, _, cls in mul["nodes"].values() if "conflict" in cls}
    assert highlighted == {"saver", "tensor", "write"}

    tanh = by_saver["TanhBackward0"]  # saved its own output: input -> saver -> tensor
    assert [t[0] for t in _by_role(tanh, "input")] == ["AddmmBackward0"]
    assert [t[0] for t in _by_role(tanh, "consumer")] == ["MulBackward0"]
    assert f"{HERE}:{line_of('SAVE-tanh')}" in _by_role(tanh, "saver")[0]

    for picture in pictures.values():  # the layout never stacks boxes on each other
        boxes = picture["boxes"]
        for i, (x1, y1, w1, h1) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[i + 1:]:
                assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1


def test_captured_graph_is_plain_data_and_keeps_nothing_alive():
    lin = nn.Linear(3, 4)
    x = torch.randn(2, 3)
    with gradguard.detect(on_conflict="record") as session:
        h = torch.sigmoid(lin(x))
        ref = weakref.ref(h)
        h.data.zero_()
        h.sum().backward()
    (conflict,) = session.conflicts
    assert json.loads(json.dumps(conflict.graph)) == conflict.graph  # strings only
    weight = weakref.ref(lin.weight)  # an AccumulateGrad input in the picture
    assert len(runtime.registry) == 0  # freed by reference counting: capture made no cycle
    del h, lin
    gc.collect()
    assert ref() is None and weight() is None
    assert conflict.graph["nodes"][0]["role"] == "tensor"


def test_draw_without_a_backward_uses_the_conflicts_own_fields(tmp_path):
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(gradguard.InplaceConflictError):
        with gradguard.detect(when="write") as session:
            y = x.exp()  # SAVE-exp
            y.add_(1)  # stopped at the write: no backward node to read a graph from
    (conflict,) = session.conflicts
    assert conflict.graph is None
    picture = next(iter(_parse(session.draw(tmp_path / "w.svg", engine="python")).values()))
    assert _by_role(picture, "write")[0][0] == "write: Tensor.add_"
    (saver,) = _by_role(picture, "saver")  # found in the graph at the write
    assert saver[0] == "ExpBackward0" and f"{HERE}:{line_of('SAVE-exp')}" in saver
    assert _by_role(picture, "producer") == [["ExpBackward0"]]
    assert len(picture["edges"]) == 3


def test_draw_writes_graphviz_source_and_rejects_bad_input(tmp_path):
    session = _conflicts_of_planted_data_write()
    dot = session.draw(tmp_path / "c.dot").read_text()
    assert dot == to_dot(session.conflicts)
    assert dot.count("subgraph cluster_") == 2
    assert '"MulBackward0\\nforward: mul\\nsaved by mul' in dot
    assert 'label="in-place write"' in dot and "constraint=false" in dot  # tanh's back edge
    with pytest.raises(ValueError, match=r"\.svg"):
        session.draw(tmp_path / "c.png")
    with pytest.raises(TypeError, match="file path"):
        session.draw(None)
    with pytest.raises(ValueError, match="engine"):
        session.draw(tmp_path / "c.svg", engine="neato")
    if shutil.which("dot") is None:
        with pytest.raises(ValueError, match="Graphviz"):
            session.draw(tmp_path / "c.svg", engine="dot")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")
def test_draw_with_graphviz_names_the_nodes(tmp_path):
    session = _conflicts_of_planted_data_write()
    text = session.draw(tmp_path / "c.svg", engine="dot").read_text()
    root = ET.fromstring(text)
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"MulBackward0", "TanhBackward0", "write: Tensor.mul_", "in-place write"} <= texts


def test_draw_with_no_conflicts_says_so(tmp_path):
    with gradguard.detect() as session:
        torch.randn(2, requires_grad=True).exp().sum().backward()
    root = ET.parse(session.draw(tmp_path / "none.svg")).getroot()
    assert [t.text for t in root.iter(f"{SVG}text")] == ["gradguard: no conflicts"]


def _split_conflict():
    x = torch.randn(3, 6, requires_grad=True)
    with gradguard.detect() as session:
        with pytest.raises(RuntimeError, match="Output 0 of Split"):
            qkv = x * 1
            q, k, v = qkv.split(2, dim=-1)  # SPLIT-graph
            q.mul_(0.5)
    return session


def test_the_picture_shows_where_the_tensor_came_from(tmp_path):
    session = _split_conflict()
    line = line_of("SPLIT-graph")
    picture = next(iter(_parse(session.draw(tmp_path / "o.svg", engine="python")).values()))
    (origin,) = _by_role(picture, "origin")
    assert origin == ["view `q` of `qkv`: output 0 of split, which", "returns several views",
                      f"{HERE}:{line}", "q, k, v = qkv.split(2, dim=-1)  # SPLIT-graph"]
    (tensor,) = [nid for nid, (role, _, _) in picture["nodes"].items() if role == "tensor"]
    (made,) = [nid for nid, (role, _, _) in picture["nodes"].items() if role == "origin"]
    assert (made.split("-")[-1], tensor.split("-")[-1], "data") in {
        (s.split("-")[-1], d.split("-")[-1], r) for s, d, r in picture["edges"]}
    dot = session.draw(tmp_path / "o.dot").read_text()
    assert ('[label="view `q` of `qkv`: output 0 of split, which\\nreturns several views\\n'
            f'{HERE}:{line}\\nq, k, v = qkv.split(2, dim=-1)  # SPLIT-graph", '
            'fillcolor="#f3e5f5"') in dot
    assert 'label="made"' in dot


def test_a_view_of_a_leaf_chains_its_origin_steps(tmp_path):
    with gradguard.detect() as session:
        w = torch.randn(4, requires_grad=True)  # LEAF-graph
        head = w[:2]  # HEAD-graph
        with pytest.raises(RuntimeError, match="a view of a leaf Variable"):
            head.mul_(2)
    picture = next(iter(_parse(session.draw(tmp_path / "l.svg", engine="python")).values()))
    assert [texts[:2] for texts in _by_role(picture, "origin")] == [
        ["view `head` of leaf `w`", f"{HERE}:{line_of('HEAD-graph')}"],
        ["leaf `w` (requires grad)", f"{HERE}:{line_of('LEAF-graph')}"]]
    dot = session.draw(tmp_path / "l.dot").read_text()
    assert 'label="from"' in dot  # the leaf -> the view -> the written tensor
