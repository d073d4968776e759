"""``gradguard lint [PATH...]``."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gradguard.errors import UsageError
from gradguard.lint.engine import FileResult, lint_file
from gradguard.lint.files import display_path
from gradguard.lint.selection import Selection, add_selection_arguments, silence_stdout

FORMATS = ("text", "json", "sarif")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    parser.add_argument("--fix", action="store_true", help="apply safe fixes in place, then report what is left")


def report_crashes(results: Sequence[FileResult]) -> int:
    crashed = [r for r in results if r.crash]
    for r in crashed:
        print(f"gradguard: internal error while linting {r.path}: {r.crash} (please report this)", file=sys.stderr)
    return len(crashed)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BrokenPipeError:  # `gradguard lint | head`
        silence_stdout()
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.fix or args.diff:
        from gradguard._cli.fix import run_fixes

        rc = run_fixes(args, quiet_summary=args.format != "text")
        if args.diff:
            return rc
    sel = Selection(args)
    results = [lint_file(p, sel.codes, display_path(p)) for p in sel.files]
    diags = [d for r in results for d in r.diagnostics]
    crashes = report_crashes(results)
    if args.format == "json":
        from gradguard.lint.output import to_json

        print(to_json(diags))
    elif args.format == "sarif":
        from gradguard.lint.output import to_sarif

        print(to_sarif(diags))
    else:
        from gradguard.lint.output import format_text, summary_line

        if diags:
            print(format_text(diags))
        print(summary_line(diags))
    if crashes:
        return 2
    return 1 if diags else 0


__all__ = ["add_arguments", "run", "UsageError"]
