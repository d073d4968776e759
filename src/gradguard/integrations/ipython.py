"""The IPython/Jupyter extension: ``%load_ext gradguard``.

Every following cell runs inside its own gradguard session (``on_conflict="record"``).
When a cell found conflicts, the report is displayed under it: HTML in a notebook (each
conflict's sections, the source around its write and save lines, and its picture), the
text report in a terminal IPython. A cell PyTorch itself rejects keeps its error and
traceback; the report comes after them. Clean cells get nothing from gradguard.

    %load_ext gradguard
    %gradguard off        # stop checking cells
    %gradguard on         # check cells again (detect)
    %gradguard protect    # check and repair: copy-on-write (gradguard.protect)
    %gradguard            # say which mode is on

    %%gradguard [protect]
    ...                   # check this one cell, whatever the mode
"""
from __future__ import annotations

import html
import re
from typing import Any, Optional

MODES = ("off", "on", "protect")
_EXTENSIONS: dict[int, "Extension"] = {}  # id(shell) -> its extension


def _scoped_css(css: str, scope: str) -> str:
    """Prefix every selector with ``scope``, so the report's style stays in the report."""
    def rule(match: "re.Match[str]") -> str:
        selectors = [s.strip() for s in match.group(1).split(",")]
        scoped = [scope if s == "body" else f"{scope} {s}" for s in selectors]
        return f"{', '.join(scoped)} {{{match.group(2)}}}"

    return re.sub(r"([^{}]+)\{([^{}]*)\}", rule, css)


def report_html(session: Any, title: str) -> str:
    """The HTML report of ``session`` as a fragment for a notebook output (the page
    `gradguard.write_html` writes, its style scoped to the fragment)."""
    from gradguard._explain.html import render_html

    page = render_html(session.conflicts, session.coverage_gaps, title=title)
    style = re.search(r"<style>(.*?)</style>", page, flags=re.S)
    body = re.search(r"<body>(.*)</body>", page, flags=re.S)
    css = _scoped_css(style.group(1), ".gradguard-report") if style else ""
    return (f'<div class="gradguard-report"><style>{css}</style>'
            f"{body.group(1) if body else html.escape(session.report())}</div>")


def show(session: Any, title: str) -> None:
    """Display the report under the cell: the frontend picks HTML or text."""
    from IPython.display import display

    display({"text/html": report_html(session, title), "text/plain": session.report()},
            raw=True)


class Extension:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.mode = "on"
        self.session: Any = None

    @staticmethod
    def make_session(protect: bool) -> Any:
        import gradguard

        return (gradguard.protect if protect else gradguard.detect)(on_conflict="record")

    # -- the cell events ---------------------------------------------------------------
    def pre_run_cell(self, info: Any = None) -> None:
        self._finish(show_report=False)  # a cell that never reached post_run_cell
        if self.mode != "off":
            self.session = self.make_session(self.mode == "protect").__enter__()

    def post_run_cell(self, result: Any = None) -> None:
        self._finish(show_report=True)

    def _finish(self, show_report: bool) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        session.__exit__(None, None, None)
        if show_report and (session.conflicts or session.coverage_gaps):
            show(session, f"gradguard: cell [{self.shell.execution_count}]")

    # -- the magics ------------------------------------------------------------------
    def line_magic(self, line: str) -> Optional[str]:
        arg = line.strip()
        if not arg:
            return f"gradguard: {self.mode}"
        if arg not in MODES:
            raise _usage(f"%gradguard: expected one of {', '.join(MODES)}, not {arg!r}")
        self.mode = arg
        return None

    def cell_magic(self, line: str, cell: str) -> None:
        arg = line.strip()
        if arg not in ("", "protect"):
            raise _usage(f"%%gradguard: expected nothing or 'protect', not {arg!r}")
        shell = self.shell
        filename = shell.compile.cache(cell, shell.execution_count, raw_code=cell)
        code = shell.compile(cell, filename, "exec")  # the cell's lines, for the report
        session = self.make_session(arg == "protect")
        try:
            with session:
                self.run_cell_code(code)
        finally:
            if session.conflicts or session.coverage_gaps:
                show(session, f"gradguard: cell [{shell.execution_count}]")
                if self.session is not None:  # the cell's own session saw them too
                    self.session.conflicts[:] = [c for c in self.session.conflicts
                                                 if c not in session.conflicts]


    def run_cell_code(self, code: Any) -> None:
        exec(code, self.shell.user_ns)


def _usage(message: str) -> Exception:
    from IPython.core.error import UsageError

    return UsageError(message)


def _cell_boundaries(shell: Any) -> None:
    """Stack walks end at the frame that runs the cell (IPython's run_code, or the
    %%gradguard magic), as they end at the script under `gradguard run`."""
    from IPython.core.interactiveshell import InteractiveShell

    from gradguard._core import sites

    for run_code in {InteractiveShell.run_code, type(shell).run_code}:
        sites.mark_internal(run_code.__code__, stop=True)
    sites.mark_internal(Extension.run_cell_code.__code__, stop=True)


def load_ipython_extension(shell: Any) -> None:
    if id(shell) in _EXTENSIONS:
        return
    _cell_boundaries(shell)
    ext = _EXTENSIONS[id(shell)] = Extension(shell)
    shell.events.register("pre_run_cell", ext.pre_run_cell)
    shell.events.register("post_run_cell", ext.post_run_cell)
    shell.register_magic_function(ext.line_magic, "line", "gradguard")
    shell.register_magic_function(ext.cell_magic, "cell", "gradguard")


def unload_ipython_extension(shell: Any) -> None:
    ext = _EXTENSIONS.pop(id(shell), None)
    if ext is None:
        return
    ext._finish(show_report=False)
    shell.events.unregister("pre_run_cell", ext.pre_run_cell)
    shell.events.unregister("post_run_cell", ext.post_run_cell)
    ext.mode = "off"
