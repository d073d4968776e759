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
``origin`` (where the tensor came from: the `Conflict.origin` steps), ``more`` (neighbours
left out). Edge roles: ``saved``, ``write``, ``data``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence
from xml.sax.saxutils import escape

from gradguard._findings.model import Conflict, Frame

MAX_NEIGHBOURS = 6  # per group (inputs, consumers, readers); the rest become "... N more"

HIGHLIGHT = ("saver", "tensor", "write")

# role -> (fill, stroke, stroke width)
_NODE_STYLE = {
    "saver": ("#fdecea", "#c62828", 2.5),
    "tensor": ("#ffcdd2", "#b71c1c", 2.5),
    "write": ("#fff3e0", "#e65100", 2.5),
    "leaf": ("#e3f2fd", "#1565c0", 1.2),
    "more": ("#ffffff", "#9e9e9e", 1.0),
    "origin": ("#f3e5f5", "#6a1b9a", 1.2),
}
_DEFAULT_NODE = ("#f5f5f5", "#616161", 1.2)
# role -> (stroke, width, dashed)
_EDGE_STYLE = {
    "saved": ("#c62828", 2.2, False),
    "write": ("#e65100", 2.2, True),
}
_DEFAULT_EDGE = ("#757575", 1.2, False)


# -- capture (inside backward, on a confirmed conflict) -------------------------------------
class GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[dict[str, Any]] = []
        self._pairs: set[tuple[str, str]] = set()

    def add(self, label: str, detail: Sequence[str], role: str) -> str:
        nid = f"n{len(self.nodes)}"
        self.nodes.append({"id": nid, "label": label, "detail": [d for d in detail if d],
                           "role": role})
        return nid

    def edge(self, src: str, dst: str, label: str = "", role: str = "data",
             back: bool = False) -> None:
        if (src, dst) in self._pairs:
            return
        self._pairs.add((src, dst))
        self.edges.append({"src": src, "dst": dst, "label": label, "role": role, "back": back})

    def graph(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "edges": self.edges}


def _site(frame: Optional[Frame]) -> str:
    return f"{os.path.basename(frame.file)}:{frame.line}" if frame else ""


def _short_source(frame: Optional[Frame], width: int = 48) -> str:
    text = frame.source if frame else ""
    return text if len(text) <= width else text[: width - 3] + "..."


def tensor_node(b: GraphBuilder, c: Conflict) -> str:
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


def write_node(b: GraphBuilder, c: Conflict, target: str) -> None:
    w = c.write
    if w is None:
        return
    how = ", ".join(x for x in (f"via {w.via}" if w.via else "",
                                f"through {w.alias}" if w.alias else "") if x)
    wid = b.add(f"write: {w.op}", [how, _site(w.site), _short_source(w.site)], "write")
    b.edge(wid, target, "in-place write", role="write")


def origin_nodes(b: GraphBuilder, c: Conflict, target: str) -> None:
    """The ORIGIN steps (the view the tensor was written through, back to the parameter
    or the leaf), each with the line that made it, chained into the tensor's node."""
    below = target
    for o in c.origin:
        lines = textwrap.wrap(o.what, 48) or [""]
        oid = b.add(lines[0], [*lines[1:], _site(o.site), _short_source(o.site)], "origin")
        b.edge(oid, below, "made" if below == target else "from")
        below = oid


def saver_detail(c: Conflict) -> list[str]:
    s = c.saved
    if s is None:
        return []
    return [f"saved by {s.op}" if s.op else "", _site(s.site), _short_source(s.site)]


def minimal_graph(c: Conflict) -> dict[str, Any]:
    """The picture made from the conflict's own fields (no autograd neighbourhood): used
    when none was captured (``when="write"``, PyTorch's own errors at the write)."""
    b = GraphBuilder()
    tid = tensor_node(b, c)
    write_node(b, c, tid)
    origin_nodes(b, c, tid)
    if c.tensor is not None and c.tensor.produced_by:
        b.edge(b.add(c.tensor.produced_by, (), "producer"), tid)
    if c.saved is not None:
        sid = b.add(c.saved.node or c.saved.op or "saving op", saver_detail(c), "saver")
        b.edge(tid, sid, "saved for backward", role="saved")
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
    cls = "node conflict" if n["role"] in HIGHLIGHT else "node"
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
