"""Rendering conflicts: text (AddressSanitizer-style fixed sections) and JSON.

Text layout, in fixed order: headline (kind and code), WRITE (op and user frames with
source), SAVED (backward node, forward op, user frames), TENSOR (compact description and
where it came from), ALIASING (written vs saved byte ranges), FIX, then one greppable
``SUMMARY: gradguard: <kind> <file>:<line> in <func> (<op>)`` line. Tensors are described,
never printed; no addresses or timings appear, so reports are stable across runs.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from gradguard._findings.model import Conflict, Frame
from gradguard._findings.nodes import describe_node

_RED, _BOLD, _DIM, _GREEN, _RESET = "\033[31m", "\033[1m", "\033[2m", "\033[32m", "\033[0m"


def _frames(stack: Sequence[Frame]) -> list[str]:
    """Every captured user frame (capture already bounds them: ``max_stack``)."""
    lines = []
    for i, f in enumerate(stack):
        lines.append(f"    #{i} {f.file}:{f.line} in {f.function}"
                     + ("  (library)" if f.library else ""))
        if f.source:
            lines.append(f"         {f.source}")
    if not stack:
        lines.append("    (no user frames)")
    return lines


def render_conflict(c: Conflict, color: bool = False) -> str:
    red, bold, dim, green, reset = (_RED, _BOLD, _DIM, _GREEN, _RESET) if color else ("",) * 5
    out = [f"{red}{bold}==== gradguard: {c.kind} [{c.code}]{reset}", f"{bold}{c.title}{reset}"]
    if c.detail:
        out.append(c.detail)
    if c.repaired:
        out.append(f"{green}repaired: gradguard.protect kept the saved bytes{reset}")
    if c.write is not None:
        extra = []
        if c.write.via:
            extra.append(f"inside {c.write.via}")
        if c.write.alias:
            extra.append(f"through {c.write.alias}")
        out.append("")
        out.append(f"{bold}WRITE{reset} {c.write.op}" + (f"  ({', '.join(extra)})" if extra else ""))
        out.extend(_frames(c.write.stack))
    if len(c.writes) > 1:
        out.append("")
        out.append(f"{bold}WRITES{reset} {len(c.writes)} writes overlapped the saved bytes, in order:")
        for i, w in enumerate(c.writes, 1):
            site = w.site
            where = f"{site.file}:{site.line} in {site.function}" if site else "<unknown>"
            out.append(f"    {i}. {w.op} at {where}" + (f"  ({w.note})" if w.note else ""))
            if site is not None and site.source:
                out.append(f"         {site.source}")
    if c.saved is not None:
        out.append("")
        by = c.saved.op or "?"
        node = f" for backward node {c.saved.node}" if c.saved.node else ""
        out.append(f"{bold}SAVED{reset} by {by}{node}")
        a = c.saved.assigned
        if a is not None:
            out.append(f"    kept on ctx at {a.file}:{a.line} in {a.function}"
                       + ("  (library)" if a.library else ""))
            if a.source:
                out.append(f"         {a.source}")
        out.extend(_frames(c.saved.stack))
    if c.tensor is not None:
        t = c.tensor
        desc = t.short()
        role = "parameter" if t.is_parameter else "tensor"
        if t.name and t.produced_by:  # a tensor on a named one's storage: a view of it
            desc = f"{t.name} ({role}), saved as a view made by {describe_node(t.produced_by)}: {desc}"
        elif t.name:
            desc = f"{t.name} ({role}) {desc}"
        elif t.produced_by:
            desc += f", produced by {describe_node(t.produced_by)}"
        out.append("")
        out.append(f"{bold}TENSOR{reset} {desc}")
    for i, o in enumerate(c.origin):
        head = f"{bold}ORIGIN{reset} " if i == 0 else "       "
        where = (f", {'made' if o.what.startswith('view') else 'created'} at "
                 f"{o.site.file}:{o.site.line} in {o.site.function}" if o.site else "")
        out.append(f"{head}{o.what}{where}")
        if o.site is not None and o.site.source:
            out.append(f"         {o.site.source}")
    if c.aliasing.get("written_bytes") is not None:
        w, s = c.aliasing["written_bytes"], c.aliasing["saved_bytes"]
        how = "overlaps" if c.overlap else "does not overlap"
        out.append(f"{bold}ALIASING{reset} same storage: written bytes [{w[0]}, {w[1]}) {how} "
                   f"saved bytes [{s[0]}, {s[1]})"
                   + ("" if c.overlap else
                      "; PyTorch still rejects it, since views share one version counter"))
    out.append("")
    out.append(f"{bold}FIX{reset} {c.fix}")
    out.append("")
    out.append(f"{dim}SUMMARY: gradguard: {c.summary()}{reset}")
    return "\n".join(out)


def render_text(conflicts: Iterable[Conflict], gaps: Iterable[str] = (), color: bool = False) -> str:
    parts = [render_conflict(c, color) for c in conflicts]
    gaps = list(gaps)
    if gaps:
        parts.append("gradguard: coverage gaps:\n" + "\n".join(f"  - {g}" for g in gaps))
    return "\n\n".join(parts)


def render_run(conflicts: Sequence[Conflict], gaps: Sequence[str] = (), color: bool = False,
               prefix: str = "") -> str:
    """The report `gradguard run` prints at exit: every conflict (each ending with its
    SUMMARY line) and the coverage gaps, or one line when there is nothing to report;
    every line starts with ``prefix`` (``[rank1] `` under torchrun)."""
    text = render_text(conflicts, gaps, color=color)
    if not conflicts:
        clean = "gradguard: no in-place conflicts found"
        text = f"{clean}\n{text}" if text else clean
    return "\n".join(f"{prefix}{line}" if line else prefix.rstrip() for line in text.split("\n"))
