"""``gradguard xray``: run a training script and x-ray what backward keeps in one step.

    gradguard xray [--json FILE] [--html FILE] [--top N] script.py [args...]
    gradguard xray [options] -m module [args...]

The target runs as ``python script.py args`` would (`gradguard._cli.launch`), inside one
`gradguard.xray(until="next-forward")` session: the step recorded runs from the first
tensor autograd saves to the first save after the first ``backward()`` finished (the next
forward), so the optimizer step and ``zero_grad`` after backward belong to it. The rest
of the script runs unrecorded. The text report goes to stderr when the target ends.
Exit code: the target's own.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from gradguard._cli import launch as _launch
from gradguard._cli.run import _check_writable, _launcher_boundaries, _target_from
from gradguard.errors import UsageError

_VALUED = {"--json", "--html", "--top"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("gradguard xray [--json FILE] [--html FILE] [--top N] script.py [args ...]\n"
                    "       gradguard xray [options] -m module [args ...]")
    parser.add_argument("--json", metavar="FILE", help="write the full record as JSON")
    parser.add_argument("--html", metavar="FILE",
                        help="write an HTML page with a chart of saved bytes over the step")
    parser.add_argument("--top", metavar="N", type=int, default=10,
                        help="rows in each table of the text report (default 10)")
    parser.add_argument("-m", dest="module", metavar="module", default=None,
                        help="run a library module as a script, like python -m")
    parser.add_argument("script", nargs="?", help="the script to run, then its arguments")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def split_argv(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    def takes_value(token: str) -> Optional[bool]:
        return True if token in _VALUED else None

    return _launch.split_command(tokens, takes_value)


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise UsageError(f"--top must be 1 or more, not {args.top}")
    target = _target_from(args)
    if target is None:
        raise UsageError("nothing to run: give a script or -m module "
                         "(see `gradguard xray --help`)")
    for path, what in ((args.json, "the JSON record"), (args.html, "the HTML page")):
        if path:
            _check_writable(path, what)
    target.resolve()
    from gradguard._xray import report
    from gradguard._xray.session import XraySession

    _launcher_boundaries()
    session = XraySession(until="next-forward", top=args.top)
    code = 1
    try:
        with session:
            code = target.run()
    finally:
        sys.stdout.flush()
        data = report.to_dict(session)
        sys.stderr.write(report.render_text(data, top=args.top))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(report.to_json(data) + "\n")
        if args.html:
            report.write_html(data, args.html)
        sys.stderr.flush()
    return code
