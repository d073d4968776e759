"""The HTML report: one self-contained page (no scripts, no external files).

For each conflict: its text report (the same text as ``session.report()``), the source
around the write line, the save line and each ORIGIN line, the WRITES timeline when more
than one write overlapped the saved bytes, and its picture (inline SVG from
`gradguard._explain.picture`). Then the coverage gaps. ``write_html(session, path)`` is what
``gradguard run --html PATH`` calls.
"""
from __future__ import annotations

import html
import linecache
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from gradguard._findings.model import Conflict, Frame

CONTEXT_LINES = 3  # source lines shown above and below the write and the save line

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-top: 1px solid #ddd;
       padding-top: 1em; } h3 { font-size: 1em; margin-bottom: .3em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 12px; }
.code { font-size: 12px; border-collapse: collapse; width: 100%; background: #f7f7f7; }
.code td { font-family: monospace; white-space: pre; padding: 0 .6em; }
.code td.ln { color: #888; text-align: right; width: 4em; user-select: none; }
.code tr.hit { background: #ffe0e0; font-weight: bold; }
.code tr.hit td.ln { color: #c62828; }
.kind { color: #c62828; } .fix { background: #e8f5e9; padding: .6em; }
.picture { overflow-x: auto; border: 1px solid #eee; }
.none { color: #2e7d32; }
"""


def snippet(frame: Optional[Frame], context: int = CONTEXT_LINES) -> list[tuple[int, str, bool]]:
    """``(line number, text, is the frame's line)`` for the lines around ``frame``."""
    if frame is None or not frame.file:
        return []
    lines = linecache.getlines(frame.file)
    if not lines or not 1 <= frame.line <= len(lines):
        return [(frame.line, frame.source, True)] if frame.source else []
    lo, hi = max(1, frame.line - context), min(len(lines), frame.line + context)
    return [(n, lines[n - 1].rstrip("\n"), n == frame.line) for n in range(lo, hi + 1)]


def _code_block(title: str, frame: Optional[Frame], css_class: str) -> str:
    rows = snippet(frame)
    if frame is None:
        return ""
    head = (f'<h3>{html.escape(title)}: <code>{html.escape(frame.file)}:{frame.line}</code> '
            f"in <code>{html.escape(frame.function)}</code></h3>")
    if not rows:
        return head + "<p>(source not available)</p>"
    body = "".join(
        f'<tr class="{"hit" if hit else ""}" data-line="{n}"><td class="ln">{n}</td>'
        f"<td>{html.escape(text)}</td></tr>"
        for n, text, hit in rows)
    return f'{head}<table class="code {css_class}">{body}</table>'


def _writes(c: Conflict) -> str:
    """The WRITES timeline (every write that overlapped the saved bytes, in order), when
    there was more than one."""
    if len(c.writes) < 2:
        return ""
    items = []
    for w in c.writes:
        site = w.site
        where = (f" at <code>{html.escape(site.file)}:{site.line}</code> in "
                 f"<code>{html.escape(site.function)}</code>" if site else "")
        note = f" ({html.escape(w.note)})" if w.note else ""
        source = (f'<br><code class="source">{html.escape(site.source)}</code>'
                  if site is not None and site.source else "")
        items.append(f"<li><code>{html.escape(w.op)}</code>{where}{note}{source}</li>")
    return (f"<h3>Writes: {len(c.writes)} writes overlapped the saved bytes, in order</h3>"
            f'<ol class="writes">{"".join(items)}</ol>')


def render_html(conflicts: Sequence[Conflict], gaps: Sequence[str] = (),
                title: str = "gradguard report") -> str:
    from gradguard._explain.picture import render_svg
    from gradguard._explain.text import render_conflict

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    if conflicts:
        out.append(f'<p class="summary">{len(conflicts)} conflict'
                   f'{"s" if len(conflicts) != 1 else ""} found.</p><ul class="toc">')
        out.extend(f'<li><a href="#conflict-{i}">#{i} [{html.escape(c.code)}] '
                   f"{html.escape(c.summary())}</a></li>" for i, c in enumerate(conflicts, 1))
        out.append("</ul>")
    else:
        out.append('<p class="summary none">No conflicts found.</p>')
    for i, c in enumerate(conflicts, 1):
        out.append(f'<section class="conflict" id="conflict-{i}" data-code="{c.code}">')
        out.append(f'<h2><span class="kind">#{i} {html.escape(c.kind)} [{c.code}]</span> '
                   f"{html.escape(c.title)}</h2>")
        if c.detail:
            out.append(f'<p class="detail">{html.escape(c.detail)}</p>')
        out.append(f'<p class="fix"><b>Fix:</b> {html.escape(c.fix)}</p>')
        out.append(_code_block("Write", c.write.user_site if c.write else None, "write"))
        out.append(_code_block("Saved", c.saved.user_site if c.saved else None, "saved"))
        out.extend(_code_block(f"Origin: {o.what}", o.site, "origin") for o in c.origin
                   if o.site is not None)
        out.append(_writes(c))
        svg = render_svg([c], prefix=f"c{i}-")
        out.append(f'<h3>Picture</h3><div class="picture">{svg}</div>')
        out.append(f'<h3>Report</h3><pre class="report">{html.escape(render_conflict(c))}</pre>')
        out.append("</section>")
    if gaps:
        out.append('<h2>Coverage gaps</h2><ul class="gaps">')
        out.extend(f"<li>{html.escape(g)}</li>" for g in gaps)
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_html(source: Any, path: Any, title: str = "gradguard report") -> Path:
    """Write the report of ``source`` (a `DetectSession`, a `VerifyResult`, or a list of
    `Conflict`) to ``path`` as one self-contained HTML page, and return the `Path`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"write_html() needs a file path (str or os.PathLike), not "
                        f"{type(path).__name__}")
    conflicts = getattr(source, "conflicts", source)
    try:
        conflicts = list(conflicts)
    except TypeError:
        conflicts = None
    if conflicts is None or not all(isinstance(c, Conflict) for c in conflicts):
        raise TypeError("write_html() needs a gradguard DetectSession, a VerifyResult or a "
                        f"list of gradguard.Conflict, not {type(source).__name__}")
    gaps = list(getattr(source, "coverage_gaps", ()) or ())
    out = Path(path)
    out.write_text(render_html(conflicts, gaps, title=title), encoding="utf-8")
    return out


write_html.__module__ = "gradguard"
