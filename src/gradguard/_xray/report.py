"""xray's results: a plain dict (the JSON), a text report and an HTML page with an SVG
chart of the saved bytes alive over the step."""
from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from gradguard._core import sites


def _line_of(stack: Any) -> tuple[str, str]:
    """('file:line', source) of a raw stack's innermost user frame."""
    frames = sites.resolve(stack[:1]) if stack else []
    if not frames:
        return "<unknown>", ""
    f = frames[0]
    return f"{f.file}:{f.line}", f.source


SCHEMA = "gradguard.xray/1"


def _mb(n: float) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{int(n)} B"


def to_dict(session: Any) -> dict[str, Any]:
    saved = []
    lines: dict[str, dict[str, Any]] = defaultdict(lambda: {"bytes": 0, "tensors": 0})
    for rec in session.saved:
        where, source = _line_of(rec["stack"])
        node = session.nodes[rec["node"]]["name"] if rec["node"] is not None else None
        item = {k: rec[k] for k in ("index", "shape", "dtype", "bytes")}
        item["parameter"] = session.parameter_name(rec)
        item.update(role=rec["role"] or "unknown", node=node, line=where, source=source)
        saved.append(item)
        if rec["role"] != "parameter":
            entry = lines[where]
            entry["bytes"] += rec["bytes"]
            entry["tensors"] += 1
            entry["source"] = source
    top_lines = sorted(({"line": k, **v} for k, v in lines.items()),
                       key=lambda e: -e["bytes"])
    nodes = []
    for node in session.nodes:
        recs = [saved[i] for i in node["saved"]]
        line = next((r["line"] for r in recs if r["role"] != "parameter"),
                    recs[0]["line"] if recs else None)
        nodes.append({"index": node["index"], "name": node["name"], "line": line,
                      "saved_bytes": sum(r["bytes"] for r in recs if r["role"] != "parameter"),
                      "saved": [{k: r[k] for k in ("index", "role", "shape", "dtype", "bytes",
                                                   "parameter")} for r in recs]})
    writes = []
    for w in session.writes:
        where, source = _line_of(w["stack"])
        over = w["overwrote"]
        writes.append({"op": w["op"], "line": where, "source": source, "bytes": w["bytes"],
                       "phase": w["phase"], "safe": w["safe"],
                       "overwrote": (None if over is None else "a tensor saved outside xray"
                                     if over == -1 else saved[over]["node"] or
                                     f"saved tensor #{over}")})
    candidates = []
    for c in session._candidates.found:
        where, source = _line_of(c["stack"])
        candidates.append({"op": c["op"], "inplace": c["inplace"], "line": where,
                           "source": source, "bytes": c["bytes"], "shape": c["shape"],
                           "dtype": c["dtype"], "freed": c.get("freed", False)})
    peak_line = saved[session.peak_at]["line"] if session.peak_at is not None else None
    return {
        "schema": SCHEMA,
        "step": ("the with-block" if session.until == "exit" else
                 "from the first save to the first save after the first backward"),
        "saved_tensors": len(saved),
        "saved_parameters": sum(1 for s in saved if s["role"] == "parameter"),
        "saved_bytes": sum(s["bytes"] for s in saved if s["role"] != "parameter"),
        "peak_saved_bytes": session.peak_bytes,
        "peak_line": peak_line,
        "nodes": nodes,
        "saved": saved,
        "top_lines": top_lines,
        "writes": writes,
        "could_be_inplace": candidates,
        "timeline": [{"event": e, "phase": p, "bytes": b} for e, p, b in session.timeline],
        "backward_event": session.backward_at,
    }


def _short(line: str | None, width: int = 40) -> str:
    if not line:
        return "-"
    parts = line.replace("\\", "/").rsplit("/", 1)
    text = parts[-1]
    return text if len(text) <= width else "..." + text[-width + 3:]


def render_text(data: dict[str, Any], top: int = 10) -> str:
    out = [f"gradguard xray: one training step ({data['step']})",
           f"  {data['saved_tensors']} saved tensors ({data['saved_parameters']} of them "
           f"parameters), {len(data['nodes'])} backward nodes",
           f"  saved bytes (parameters not counted): {_mb(data['saved_bytes'])}; "
           f"peak alive {_mb(data['peak_saved_bytes'])} at {_short(data['peak_line'], 60)}",
           "", f"Top lines by saved bytes (top {top}):",
           f"  {'saved':>11}  {'tensors':>7}  line"]
    for e in data["top_lines"][:top]:
        out.append(f"  {_mb(e['bytes']):>11}  {e['tensors']:>7}  {_short(e['line'])}  "
                   f"{e['source'][:60]}")
    nodes = sorted(data["nodes"], key=lambda n: -n["saved_bytes"])
    shown = [n for n in nodes if n["saved"]][:top]
    out += ["", f"Backward nodes by saved bytes (top {top} of "
                f"{sum(1 for n in nodes if n['saved'])} that save something):",
            f"  {'node':28} {'saved':>11}  {'forward line':32} what it saved"]
    for n in shown:
        what = ", ".join(f"{s['role']} {s['dtype']}{s['shape']}" for s in n["saved"][:3])
        if len(n["saved"]) > 3:
            what += f", +{len(n['saved']) - 3}"
        out.append(f"  {n['name'][:28]:28} {_mb(n['saved_bytes']):>11}  "
                   f"{_short(n['line'], 32):32} {what}")
    writes = data["writes"]
    safe = [w for w in writes if w["safe"]]
    out += ["", f"In-place writes: {len(writes)}, {len(safe)} safe (wrote nothing any graph "
                f"saved), {len(writes) - len(safe)} over saved bytes"]
    grouped: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for w in writes:
        grouped[(w["safe"], w["op"], w["line"])].append(w)
    for (ok, op, line), ws in sorted(grouped.items(), key=lambda kv: (kv[0][0], -len(kv[1])))[:top]:
        over = "" if ok else f"  overwrote {ws[0]['overwrote']}"
        out.append(f"  {'safe  ' if ok else 'UNSAFE'} {len(ws):>4}x {op:24} {_short(line)} "
                   f"[{ws[0]['phase']}]{over}")
    cands = [c for c in data["could_be_inplace"] if c["freed"]]
    alive = len(data["could_be_inplace"]) - len(cands)
    total = sum(c["bytes"] for c in cands)
    out += ["", f"Could be in place: {len(cands)} out-of-place ops ({_mb(total)} of new "
                "outputs) whose input nobody saved, no torch call used after, and was freed "
                f"in the step ({alive} more whose input outlived it: see the JSON)"]
    by_line: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in cands:
        by_line[(c["op"], c["inplace"], c["line"])].append(c)
    for (op, inplace, line), cs in sorted(by_line.items(),
                                          key=lambda kv: -sum(c["bytes"] for c in kv[1]))[:top]:
        out.append(f"  {len(cs):>4}x {op} -> {inplace:12} {_mb(sum(c['bytes'] for c in cs)):>11}"
                   f"  {_short(line)}  {cs[0]['source'][:50]}")
    return "\n".join(out) + "\n"


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1)


def _chart(data: dict[str, Any], width: int = 900, height: int = 260) -> str:
    points = data["timeline"]
    pad_l, pad_r, pad_t, pad_b = 86, 20, 20, 40
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    n = max(len(points) - 1, 1)
    top = max([p["bytes"] for p in points] + [1])
    xy = [(pad_l + w * i / n, pad_t + h * (1 - p["bytes"] / top)) for i, p in enumerate(points)]
    base = pad_t + h
    area = (f"M{pad_l},{base} " + " ".join(f"L{x:.1f},{y:.1f}" for x, y in xy)
            + f" L{xy[-1][0] if xy else pad_l:.1f},{base} Z")
    line = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(xy))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="saved bytes over the step">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = pad_t + h * (1 - frac)
        parts.append(f'<line x1="{pad_l}" y1="{y:.1f}" x2="{pad_l + w}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{pad_l - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#555">{html.escape(_mb(top * frac))}</text>')
    parts.append(f'<path d="{area}" fill="#4a90d9" fill-opacity="0.35"/>')
    parts.append(f'<path d="{line}" fill="none" stroke="#1f5fa8" stroke-width="1.5"/>')
    bw = data.get("backward_event")
    if bw is not None and points:
        x = pad_l + w * min(bw, n) / n
        parts.append(f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{base}" stroke="#c0392b" '
                     f'stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{base - 6}" '
                     f'font-size="11" fill="#c0392b">backward()</text>')
    if points:
        i = max(range(len(points)), key=lambda k: points[k]["bytes"])
        px, py = xy[i]
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="#c0392b"/>'
                     f'<text x="{px + 6:.1f}" y="{py + 4:.1f}" font-size="11">peak '
                     f'{html.escape(_mb(points[i]["bytes"]))}</text>')
    parts.append(f'<text x="{pad_l + w / 2}" y="{height - 8}" font-size="12" text-anchor="middle" '
                 f'fill="#333">events (each save in forward, each release in backward)</text>')
    parts.append(f'<text x="14" y="{pad_t + h / 2}" font-size="12" fill="#333" '
                 f'transform="rotate(-90 14 {pad_t + h / 2})" text-anchor="middle">'
                 f'saved bytes alive</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(data: dict[str, Any], title: str = "gradguard xray") -> str:
    esc = html.escape

    def table(headers: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>"
                       for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    text = render_text(data, top=10)
    summary = esc(text.split("\n\n")[0])
    top_rows = [[_mb(e["bytes"]), e["tensors"], _short(e["line"], 60), e["source"]]
                for e in data["top_lines"][:20]]
    node_rows = [[n["name"], _mb(n["saved_bytes"]), _short(n["line"], 50),
                  "; ".join(f"{s['role']} {s['dtype']}{s['shape']}" for s in n["saved"])]
                 for n in sorted(data["nodes"], key=lambda n: -n["saved_bytes"]) if n["saved"]]
    write_rows = [["safe" if w["safe"] else "UNSAFE", w["op"], _short(w["line"], 50),
                   w["phase"], w["overwrote"] or ""] for w in data["writes"][:500]]
    cand_rows = [[c["op"], c["inplace"], _mb(c["bytes"]), _short(c["line"], 50),
                  "freed" if c["freed"] else "outlived the step", c["source"]]
                 for c in data["could_be_inplace"][:500]]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}
table{{border-collapse:collapse;margin:8px 0 24px;font-size:13px}}
td,th{{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}}
th{{background:#f3f5f8}}pre{{background:#f7f7f7;padding:8px}}</style></head><body>
<h1>{esc(title)}</h1><pre>{summary}</pre>
<h2>Saved bytes alive over the step</h2>{_chart(data)}
<h2>Top lines by saved bytes</h2>{table(["saved", "tensors", "line", "source"], top_rows)}
<h2>Backward nodes</h2>{table(["node", "saved", "forward line", "what it saved"], node_rows)}
<h2>In-place writes</h2>{table(["", "op", "line", "phase", "overwrote"], write_rows)}
<h2>Could be in place</h2>{table(["op", "in place", "bytes", "line", "input", "source"], cand_rows)}
</body></html>
"""


def write_html(data: dict[str, Any], path: Any) -> Path:
    target = Path(path)
    target.write_text(render_html(data), encoding="utf-8")
    return target
