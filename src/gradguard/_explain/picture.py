"""Pictures of conflicts: the part of the autograd graph around each one, as SVG.

Two halves:

* `capture()` runs inside backward, when `DetectSession.confirm` confirms a conflict (so
  only on the rare conflict, never on the hot path). It describes the neighbourhood of the
  backward node that needed the damaged tensor -- the saving node, the node that produced
  the tensor, the saving node's other inputs, the ops that consumed its output and the
  other ops that read the same tensor -- as a plain dict of strings (``Conflict.graph``).
  No tensor and no autograd node is kept: a picture drawn after the graph is freed needs
  none, and holding them would keep memory alive that PyTorch would have freed.
* `draw()` / `render_svg()` lay that dict out and write SVG: with Graphviz ``dot`` when it
  is on ``PATH``, otherwise with a small layered layout in pure Python (no dependency).

Graph dict schema: ``{"nodes": [{"id", "label", "detail": [str, ...], "role"}],
"edges": [{"src", "dst", "label", "role", "back"}]}``. Roles: ``saver`` (the backward node
that needed the tensor; highlighted), ``tensor`` (the saved tensor; highlighted), ``write``
(the in-place write; highlighted), ``producer``, ``input``, ``consumer``, ``reader``,
``more`` (neighbours left out). Edge roles: ``saved``, ``write``, ``data``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence
from xml.sax.saxutils import escape

import torch

from gradguard._findings.model import Conflict, Frame, TensorInfo

MAX_NEIGHBOURS = 6  # per group (inputs, consumers, readers); the rest become "... N more"
MAX_VISIT = 200_000  # autograd nodes walked to find consumers (only on a conflict)
_HIGHLIGHT = ("saver", "tensor", "write")

# role -> (fill, stroke, stroke width)
_NODE_STYLE = {
    "saver": ("#fdecea", "#c62828", 2.5),
    "tensor": ("#ffcdd2", "#b71c1c", 2.5),
    "write": ("#fff3e0", "#e65100", 2.5),
    "leaf": ("#e3f2fd", "#1565c0", 1.2),
    "more": ("#ffffff", "#9e9e9e", 1.0),
}
_DEFAULT_NODE = ("#f5f5f5", "#616161", 1.2)
# role -> (stroke, width, dashed)
_EDGE_STYLE = {
    "saved": ("#c62828", 2.2, False),
    "write": ("#e65100", 2.2, True),
}
_DEFAULT_EDGE = ("#757575", 1.2, False)


# -- capture (inside backward, on a confirmed conflict) -------------------------------------
class _Builder:
    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[dict[str, Any]] = []
        self._ids: dict[int, str] = {}  # id(autograd node) -> our id, during capture only

    def add(self, label: str, detail: Sequence[str], role: str) -> str:
        nid = f"n{len(self.nodes)}"
        self.nodes.append({"id": nid, "label": label, "detail": [d for d in detail if d],
                           "role": role})
        return nid

    def autograd(self, fn: Any, role: str, detail: Sequence[str] = (),
                 leaf_name: Optional[str] = None) -> str:
        nid = self._ids.get(id(fn))
        if nid is None:
            label, extra = _describe_fn(fn, leaf_name)
            nid = self._ids[id(fn)] = self.add(label, [*extra, *detail],
                                                "leaf" if label == "AccumulateGrad" and
                                                role not in _HIGHLIGHT else role)
        return nid

    def edge(self, src: str, dst: str, label: str = "", role: str = "data",
             back: bool = False) -> None:
        if any(e["src"] == src and e["dst"] == dst for e in self.edges):
            return
        self.edges.append({"src": src, "dst": dst, "label": label, "role": role, "back": back})

    def group(self, fns: Sequence[Any], role: str, link) -> None:  # type: ignore[no-untyped-def]
        """Add up to MAX_NEIGHBOURS autograd nodes, each linked by ``link(id)``."""
        for fn in fns[:MAX_NEIGHBOURS]:
            link(self.autograd(fn, role))
        if len(fns) > MAX_NEIGHBOURS:
            link(self.add(f"... {len(fns) - MAX_NEIGHBOURS} more", (), "more"))

    def graph(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "edges": self.edges}


def _site(frame: Optional[Frame]) -> str:
    return f"{os.path.basename(frame.file)}:{frame.line}" if frame else ""


def _short_source(frame: Optional[Frame], width: int = 48) -> str:
    text = frame.source if frame else ""
    return text if len(text) <= width else text[: width - 3] + "..."


def _describe_fn(fn: Any, leaf_name: Optional[str] = None) -> tuple[str, list[str]]:
    """Label and detail lines of an autograd node: ``MulBackward0`` / ``mul``; a leaf's
    AccumulateGrad is described (``leaf f32[4]``), and named when it is the conflict's own
    tensor (naming others would cost a scan of every live module each)."""
    from gradguard._detect.session import _forward_op

    name = fn.name()
    if name.endswith("AccumulateGrad"):
        var = getattr(fn, "variable", None)
        if var is None:
            return "AccumulateGrad", ["leaf"]
        info = TensorInfo(dtype=str(var.dtype), shape=tuple(var.shape), device=str(var.device))
        return "AccumulateGrad", [leaf_name or "leaf", info.short()]
    op = _forward_op(name)
    return name, [f"forward: {op}"] if op and op != name else []


def _tensor_node(b: _Builder, c: Conflict) -> str:
    t = c.tensor
    if t is None:
        return b.add("tensor", (), "tensor")
    if t.version_saved is None:
        versions = ""
    elif t.version_now is not None and t.version_now != t.version_saved:
        versions = f"saved at v{t.version_saved}, now v{t.version_now}"
    else:
        versions = f"saved at v{t.version_saved}, version unchanged"
    return b.add(t.name or "saved tensor", [t.short(), versions], "tensor")


def _write_node(b: _Builder, c: Conflict, target: str) -> None:
    w = c.write
    if w is None:
        return
    how = ", ".join(x for x in (f"via {w.via}" if w.via else "",
                                f"through {w.alias}" if w.alias else "") if x)
    wid = b.add(f"write: {w.op}", [how, _site(w.site), _short_source(w.site)], "write")
    b.edge(wid, target, "in-place write", role="write")


def _saver_detail(c: Conflict) -> list[str]:
    s = c.saved
    if s is None:
        return []
    return [f"saved by {s.op}" if s.op else "", _site(s.site), _short_source(s.site)]


def minimal_graph(c: Conflict) -> dict[str, Any]:
    """The picture made from the conflict's own fields (no autograd neighbourhood): used
    when none was captured (``when="write"``, PyTorch's own errors at the write)."""
    b = _Builder()
    tid = _tensor_node(b, c)
    _write_node(b, c, tid)
    if c.tensor is not None and c.tensor.produced_by:
        b.edge(b.add(c.tensor.produced_by, (), "producer"), tid)
    if c.saved is not None:
        sid = b.add(c.saved.node or c.saved.op or "saving op", _saver_detail(c), "saver")
        b.edge(tid, sid, "saved for backward", role="saved")
    return b.graph()


def _backward_roots() -> list[Any]:
    """Root nodes of the running backward, read from torch's ``_engine_run_backward``
    frame: this thread's (CPU) or the thread waiting in backward (GPU device threads)."""
    roots = _roots_on(sys._getframe(1))
    if roots is None:
        me = threading.get_ident()
        # Never this thread's frames from here: a list holding our own frame would be a
        # reference cycle keeping the graph alive until the next gc run.
        for ident, frame in sys._current_frames().items():
            if ident != me:
                roots = _roots_on(frame)
                if roots is not None:
                    break
    return roots or []


def _roots_on(frame: Any) -> Optional[list[Any]]:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_engine_run_backward" and "autograd" in code.co_filename:
            outputs = frame.f_locals.get("t_outputs") or ()
            nodes = [getattr(out, "grad_fn", None) if isinstance(out, torch.Tensor)
                     else getattr(out, "node", None) for out in outputs]
            return [n for n in nodes if n is not None]
        frame = frame.f_back
    return None


def _parents(roots: Iterable[Any], targets: Sequence[Any]) -> dict[int, list[Any]]:
    """For each target node, the nodes whose inputs include it (its forward consumers)."""
    found: dict[int, list[Any]] = {id(t): [] for t in targets if t is not None}
    seen: set[int] = set()
    stack = [r for r in roots if r is not None]
    while stack and len(seen) < MAX_VISIT:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        for child, _ in fn.next_functions:
            if child is None:
                continue
            hits = found.get(id(child))
            if hits is not None and not any(h is fn for h in hits):
                hits.append(fn)
            if id(child) not in seen:
                stack.append(child)
    return found


def _producer(node: Any, rec: Any) -> tuple[Optional[Any], bool]:
    """The node that produced the saved tensor, and whether it is ``node``'s own output."""
    inputs = [fn for fn, _ in node.next_functions if fn is not None]
    if rec.producer is None or rec.producer is type(None):  # a leaf: AccumulateGrad
        for fn in inputs:
            if getattr(fn, "variable", None) is rec.tensor:
                return fn, False
        return None, False
    candidates = [(fn, nr) for fn, nr in node.next_functions
                  if fn is not None and type(fn) is rec.producer]
    # `_raw_saved_<name>` exists for each saved tensor and reads it without unpacking
    # (reading `_saved_<name>` would run the unpack hook we are inside).
    saved = [a[len("_raw_saved_"):] for a in dir(node) if a.startswith("_raw_saved_")]
    output = type(node) is rec.producer and any(n.startswith("result") for n in saved)
    if output and saved and all(n.startswith("result") for n in saved):
        return node, True  # it saves only outputs (tanh, sigmoid, exp, softmax)
    if candidates and output:  # same op chained (tanh(tanh(x))): tell them apart by shape
        shape = list(rec.tensor.shape)
        candidates = [(fn, nr) for fn, nr in candidates
                      if list(fn._input_metadata[nr].shape) == shape]
    if candidates:
        return candidates[0][0], False
    return (node, True) if output else (None, False)


def capture(node: Any, rec: Any, conflict: Conflict) -> Optional[dict[str, Any]]:
    """The graph around ``conflict`` (see the module docstring), or None if it cannot be
    read. ``node`` is the backward node that needed ``rec``'s tensor (None outside
    backward). Never raises: a picture must not break detection."""
    if node is None:
        return None
    try:
        return _capture(node, rec, conflict)
    except Exception:  # noqa: BLE001 - diagnostic only; the conflict itself stands
        return None


def _capture(node: Any, rec: Any, c: Conflict) -> dict[str, Any]:
    b = _Builder()
    tid = _tensor_node(b, c)
    _write_node(b, c, tid)
    saver = b.autograd(node, "saver", _saver_detail(c))
    producer, is_output = _producer(node, rec)
    parents = _parents(_backward_roots(), [node, producer])
    inputs = [fn for fn, _ in node.next_functions if fn is not None and fn is not producer]
    if is_output:  # saver -> tensor -> its consumers; the saved edge points back up
        b.group(inputs, "input", lambda n: b.edge(n, saver))
        b.edge(saver, tid, "output")
        b.edge(tid, saver, "saved for backward", role="saved", back=True)
        b.group(parents.get(id(node), []), "consumer", lambda n: b.edge(tid, n))
    else:  # producer -> tensor -> saver (with its other inputs) -> consumers
        if producer is not None:
            b.edge(b.autograd(producer, "producer",
                              leaf_name=c.tensor.name if c.tensor else None), tid)
        b.edge(tid, saver, "saved for backward", role="saved")
        b.group(inputs, "input", lambda n: b.edge(n, saver))
        b.group(parents.get(id(node), []), "consumer", lambda n: b.edge(saver, n))
        if producer is not None:
            readers = [p for p in parents.get(id(producer), []) if p is not node]
            b.group(readers, "reader", lambda n: b.edge(tid, n))
    return b.graph()


def graph_of(c: Conflict) -> dict[str, Any]:
    return getattr(c, "graph", None) or minimal_graph(c)


# -- layout (pure Python) ------------------------------------------------------------------
_CHAR_W, _LINE_H, _PAD, _GAP_X, _GAP_Y, _MARGIN = 7.0, 15, 8, 28, 54, 150
_FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"


def _size(node: dict[str, Any]) -> tuple[float, float]:
    lines = [node["label"], *node["detail"]]
    width = max(len(line) for line in lines) * _CHAR_W + 2 * _PAD + 4
    return max(width, 60.0), len(lines) * _LINE_H + 2 * _PAD


def layout(graph: dict[str, Any]) -> tuple[dict[str, tuple[float, float, float, float]], float,
                                           float]:
    """Layered layout: ``{id: (x, y, w, h)}``, total width and height. Data flows down;
    back edges (``back``) do not constrain the layers."""
    ids = [n["id"] for n in graph["nodes"]]
    forward = [(e["src"], e["dst"]) for e in graph["edges"] if not e.get("back")]
    children: dict[str, list[str]] = {i: [] for i in ids}
    parents: dict[str, list[str]] = {i: [] for i in ids}
    for s, d in forward:
        children[s].append(d)
        parents[d].append(s)
    # Longest path from the sources (Kahn's order; a cycle's leftovers go to layer 0).
    layer = {i: 0 for i in ids}
    indeg = {i: len(parents[i]) for i in ids}
    queue = [i for i in ids if indeg[i] == 0]
    while queue:
        i = queue.pop(0)
        for d in children[i]:
            layer[d] = max(layer[d], layer[i] + 1)
            indeg[d] -= 1
            if indeg[d] == 0:
                queue.append(d)
    # Sources sit just above their nearest child (the write next to the tensor it hits).
    for i in ids:
        if not parents[i] and children[i]:
            layer[i] = min(layer[d] for d in children[i]) - 1
    low = min(layer.values(), default=0)
    rows: dict[int, list[str]] = {}
    for i in ids:
        rows.setdefault(layer[i] - low, []).append(i)
    order = [rows[k] for k in sorted(rows)]
    # Barycentre sweeps to reduce crossings.
    for _ in range(4):
        for r in range(1, len(order)):
            pos = {i: k for k, i in enumerate(order[r - 1])}
            order[r].sort(key=lambda i: _mean([pos[p] for p in parents[i] if p in pos], pos))
        for r in range(len(order) - 2, -1, -1):
            pos = {i: k for k, i in enumerate(order[r + 1])}
            order[r].sort(key=lambda i: _mean([pos[c] for c in children[i] if c in pos], pos))
    sizes = {n["id"]: _size(n) for n in graph["nodes"]}
    row_w = [sum(sizes[i][0] for i in row) + _GAP_X * (len(row) - 1) for row in order]
    width = max(row_w, default=0) + 2 * _MARGIN  # room on both sides for back edges
    boxes: dict[str, tuple[float, float, float, float]] = {}
    y = 0.0
    for row, w in zip(order, row_w):
        x = (width - w) / 2
        h_row = max(sizes[i][1] for i in row)
        for i in row:
            w_i, h_i = sizes[i]
            boxes[i] = (x, y + (h_row - h_i) / 2, w_i, h_i)
            x += w_i + _GAP_X
        y += h_row + _GAP_Y
    return boxes, width, max(y - _GAP_Y, 0)


def _mean(values: list[int], pos: dict[str, int]) -> float:
    return sum(values) / len(values) if values else len(pos) / 2


# -- SVG -------------------------------------------------------------------------------------
def _text(x: float, y: float, text: str, **attrs: Any) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(text)}</text>'


def _node_svg(n: dict[str, Any], box: tuple[float, float, float, float], prefix: str) -> str:
    x, y, w, h = box
    fill, stroke, width = _NODE_STYLE.get(n["role"], _DEFAULT_NODE)
    rx = 16 if n["role"] == "tensor" else 4
    cls = "node conflict" if n["role"] in _HIGHLIGHT else "node"
    tip = escape(" | ".join([n["label"], *n["detail"]]))
    out = [f'<g id="{prefix}-{n["id"]}" class="{cls}" data-role="{n["role"]}">',
           f"<title>{tip}</title>",
           f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" '
           f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"/>']
    ty = y + _PAD + 11
    out.append(_text(x + w / 2, ty, n["label"], text_anchor="middle", font_weight="bold"))
    for line in n["detail"]:
        ty += _LINE_H
        out.append(_text(x + w / 2, ty, line, text_anchor="middle", fill="#333333"))
    out.append("</g>")
    return "\n".join(out)


def _edge_svg(e: dict[str, Any], boxes: dict[str, tuple[float, float, float, float]],
              prefix: str) -> str:
    sx, sy, sw, sh = boxes[e["src"]]
    dx, dy, dw, dh = boxes[e["dst"]]
    color, width, dashed = _EDGE_STYLE.get(e["role"], _DEFAULT_EDGE)
    marker = "hot" if e["role"] in _EDGE_STYLE else "plain"
    if e.get("back") or dy <= sy:  # against the flow: around the side the target is on
        y1, y2 = sy + sh / 2, dy + dh / 2
        if dx + dw / 2 <= sx + sw / 2:
            x1, x2, side = sx, dx, -1
            bulge = min(x1, x2) - _MARGIN + 10
        else:
            x1, x2, side = sx + sw, dx + dw, 1
            bulge = max(x1, x2) + _MARGIN - 10
        path = (f"M{x1:.1f},{y1:.1f} C{bulge:.1f},{y1:.1f} {bulge:.1f},{y2:.1f} "
                f"{x2 - 2 * side:.1f},{y2:.1f}")
        # The label sits inside the loop, in the gap between the two rows.
        lx, ly, anchor = bulge - 6 * side, (y1 + y2) / 2, "end" if side > 0 else "start"
    else:
        x1, y1, x2, y2 = sx + sw / 2, sy + sh, dx + dw / 2, dy
        mid = (y2 - y1) / 2
        path = (f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + mid:.1f} {x2:.1f},{y2 - mid:.1f} "
                f"{x2:.1f},{y2 - 2:.1f}")
        lx, ly, anchor = (x1 + x2) / 2 + 4, (y1 + y2) / 2, "start"
    dash = ' stroke-dasharray="6,4"' if dashed else ""
    out = [f'<g class="edge" data-src="{prefix}-{e["src"]}" data-dst="{prefix}-{e["dst"]}" '
           f'data-role="{e["role"]}">',
           f'<path d="{path}" fill="none" stroke="{color}" stroke-width="{width}"{dash} '
           f'marker-end="url(#{prefix}-arrow-{marker})"/>']
    if e["label"]:
        out.append(_text(lx, ly + 4, e["label"], fill=color, font_size="11", text_anchor=anchor,
                         stroke="#ffffff", stroke_width="3", paint_order="stroke"))
    out.append("</g>")
    return "\n".join(out)


def _header(c: Conflict, index: int) -> list[str]:
    site = (c.write.site if c.write else None) or (c.saved.site if c.saved else None)
    where = f" at {_site(site)}" if site else ""
    return [f"#{index} [{c.code}] {c.kind}{where}", c.title]


def render_svg(conflicts: Sequence[Conflict], prefix: str = "gg") -> str:
    """One SVG document showing the graph around each conflict, stacked top to bottom."""
    parts: list[str] = []
    y = 20.0
    width = 420.0
    for index, c in enumerate(conflicts, 1):
        graph = graph_of(c)
        p = f"{prefix}{index}"
        boxes, w, h = layout(graph)
        width = max(width, w + 40, max(len(s) for s in _header(c, index)) * _CHAR_W + 40)
        title, sub = _header(c, index)
        parts.append(f'<g class="conflict" id="{p}">')
        parts.append(_text(20, y + 12, title, font_weight="bold", font_size="13"))
        parts.append(_text(20, y + 28, sub, fill="#555555"))
        top = y + 44
        parts.append(f'<g transform="translate(20,{top:.1f})">')
        parts.extend(_edge_svg(e, boxes, p) for e in graph["edges"])
        parts.extend(_node_svg(n, boxes[n["id"]], p) for n in graph["nodes"])
        parts.append("</g></g>")
        y = top + h + 36
    if not conflicts:
        parts.append(_text(20, y + 12, "gradguard: no conflicts", font_size="13"))
        y += 40
    defs = "".join(
        f'<marker id="{prefix}{i}-arrow-{kind}" viewBox="0 0 10 10" refX="9" refY="5" '
        f'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        for i in range(1, len(conflicts) + 1)
        for kind, color in (("hot", "#c62828"), ("plain", "#757575")))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{y:.0f}" '
            f'viewBox="0 0 {width:.0f} {y:.0f}" font-family="{_FONT}" font-size="12">\n'
            f"<defs>{defs}</defs>\n"
            f'<rect width="100%" height="100%" fill="#ffffff"/>\n'
            + "\n".join(parts) + "\n</svg>\n")


# -- Graphviz ----------------------------------------------------------------------------
def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(conflicts: Sequence[Conflict]) -> str:
    """Graphviz source for the same picture (one cluster per conflict)."""
    out = ["digraph gradguard {",
           '  graph [rankdir=TB, fontname="Helvetica", nodesep=0.3, ranksep=0.45];',
           '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9];']
    for index, c in enumerate(conflicts, 1):
        graph = graph_of(c)
        out.append(f"  subgraph cluster_{index} {{")
        out.append(f"    label={_dot_str(chr(10).join(_header(c, index)))}; labeljust=l;")
        for n in graph["nodes"]:
            fill, stroke, width = _NODE_STYLE.get(n["role"], _DEFAULT_NODE)
            shape = ", shape=ellipse" if n["role"] == "tensor" else ""
            out.append(f"    c{index}_{n['id']} [label={_dot_str(chr(10).join([n['label'], *n['detail']]))}, "
                       f'fillcolor="{fill}", color="{stroke}", penwidth={width}{shape}];')
        for e in graph["edges"]:
            color, width, dashed = _EDGE_STYLE.get(e["role"], _DEFAULT_EDGE)
            attrs = [f'color="{color}"', f"penwidth={width}", f'fontcolor="{color}"']
            if e["label"]:
                attrs.append(f"label={_dot_str(e['label'])}")
            if dashed:
                attrs.append("style=dashed")
            if e.get("back"):
                attrs.append("constraint=false")
            out.append(f"    c{index}_{e['src']} -> c{index}_{e['dst']} [{', '.join(attrs)}];")
        out.append("  }")
    if not conflicts:
        out.append('  empty [label="gradguard: no conflicts", shape=plaintext];')
    out.append("}")
    return "\n".join(out) + "\n"


def dot_available() -> bool:
    return shutil.which("dot") is not None


def check_path(path: Any) -> Path:
    """``path`` as a `Path` if `draw` can write it (``.svg``, ``.dot`` or ``.gv``), else a
    TypeError/ValueError that says what to pass (for checking a CLI option early)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"draw() needs a file path (str or os.PathLike), not {type(path).__name__}")
    out = Path(path)
    if out.suffix.lower() not in (".svg", ".dot", ".gv"):
        raise ValueError(f"draw() writes SVG (a path ending in .svg) or Graphviz source "
                         f"(.dot or .gv), not {out.name!r}")
    return out


def draw(conflicts: Sequence[Conflict], path: Any, engine: str = "auto") -> Path:
    """Write the picture of ``conflicts`` to ``path`` and return it as a `Path`.

    ``path`` ending in ``.svg`` gets SVG: from Graphviz ``dot`` when ``engine`` is "auto"
    and ``dot`` is on PATH (or ``engine="dot"``), else from the pure-Python layout
    (``engine="python"``). A ``.dot``/``.gv`` path gets the Graphviz source instead."""
    if engine not in ("auto", "dot", "python"):
        raise ValueError(f"engine must be 'auto', 'dot' or 'python', not {engine!r}")
    out = check_path(path)
    suffix = out.suffix.lower()
    conflicts = list(conflicts)
    if suffix != ".svg":
        out.write_text(to_dot(conflicts), encoding="utf-8")
        return out
    if engine == "dot" and not dot_available():
        raise ValueError("engine='dot' needs Graphviz's `dot` on PATH; install graphviz, or "
                         "use engine='auto' or 'python' for the built-in layout")
    svg = None
    if engine != "python" and dot_available():
        svg = _run_dot(to_dot(conflicts), strict=engine == "dot")
    if svg is None:
        svg = render_svg(conflicts)
    out.write_text(svg, encoding="utf-8")
    return out


def _run_dot(source: str, strict: bool) -> Optional[str]:
    try:
        done = subprocess.run(["dot", "-Tsvg"], input=source, capture_output=True, text=True,
                              timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        if strict:
            raise RuntimeError(f"Graphviz `dot` failed: {exc}") from exc
        return None  # fall back to the built-in layout
    return done.stdout
