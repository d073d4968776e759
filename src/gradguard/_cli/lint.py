"""``gradguard lint [PATH...]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from gradguard.errors import UsageError
from gradguard.lint.config import load_config
from gradguard.lint.engine import FileResult, lint_file, resolve_selection
from gradguard.lint.files import DEFAULT_EXCLUDES, Excluder, discover, display_path, read_gitignore

FORMATS = ("text", "json", "sarif")


def _codes(value: str) -> list:
    return [c.strip() for c in value.split(",") if c.strip()]


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``lint`` and ``fix``."""
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: .)")
    parser.add_argument("--select", type=_codes, action="extend", metavar="CODES",
                        help="comma-separated rule codes or prefixes to enable (ALL for every rule)")
    parser.add_argument("--ignore", type=_codes, action="extend", default=[], metavar="CODES",
                        help="comma-separated rule codes or prefixes to disable")
    parser.add_argument("--extend-select", type=_codes, action="extend", default=[], metavar="CODES",
                        help="rules to enable on top of the selection")
    parser.add_argument("--extend-exclude", type=_codes, action="extend", default=[], metavar="PATTERNS",
                        help="extra gitignore-style patterns to skip")
    parser.add_argument("--config", metavar="FILE", help="pyproject.toml to read [tool.gradguard] from")
    parser.add_argument("--unsafe-fixes", action="store_true", help="also apply fixes marked unsafe")
    parser.add_argument("--diff", action="store_true", help="print the fixes as a unified diff; change nothing")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    parser.add_argument("--fix", action="store_true", help="apply safe fixes in place, then report what is left")


class Selection:
    """Files and rule codes for one run, from the command line and pyproject.toml."""

    def __init__(self, args: argparse.Namespace) -> None:
        paths = list(args.paths or ["."])
        cfg = load_config(args.config, Path(paths[0]).resolve().parent if Path(paths[0]).is_file() else Path(paths[0]))
        self.config = cfg
        select = args.select if args.select else cfg.select
        self.codes = resolve_selection(select, list(cfg.ignore) + list(args.ignore),
                                       list(cfg.extend_select) + list(args.extend_select))
        patterns = list(DEFAULT_EXCLUDES) + read_gitignore(cfg.root) + list(cfg.exclude) + list(args.extend_exclude)
        self.files = list(dict.fromkeys(discover(paths, Excluder(patterns, cfg.root))))


def report_crashes(results: Sequence[FileResult]) -> int:
    crashed = [r for r in results if r.crash]
    for r in crashed:
        print(f"gradguard: internal error while linting {r.path}: {r.crash} (please report this)", file=sys.stderr)
    return len(crashed)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BrokenPipeError:  # `gradguard lint | head`
        _silence_stdout()
        return 1


def _silence_stdout() -> None:
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


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


def main(argv: Optional[Sequence[str]] = None) -> int:  # pragma: no cover - convenience
    from gradguard._cli.main import main as gg_main

    return gg_main(["lint", *(argv or [])])


__all__ = ["add_arguments", "run", "UsageError"]
