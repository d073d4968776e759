"""``gradguard fix [PATH...]`` and ``gradguard fix --from-report report.json``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradguard.errors import UsageError
from gradguard.lint.engine import decode_source
from gradguard.lint.files import write_or_diff
from gradguard.lint.selection import Selection, add_selection_arguments, silence_stdout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument("--from-report", metavar="REPORT.json",
                        help="fix exactly the write sites listed in a `gradguard run` JSON report")


def run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "from_report", None):
            from gradguard._cli.fix_report import run_from_report

            return run_from_report(args)
        return run_fixes(args)
    except BrokenPipeError:  # `gradguard fix --diff | head`
        silence_stdout()
        return 1


def _read(path: Path) -> tuple:
    data = path.read_bytes()
    return data, decode_source(data)


def run_fixes(args: argparse.Namespace, quiet_summary: bool = False) -> int:
    """Fix every selected file; returns 1 if anything fixable was left unfixed or
    (with --diff) if there is something to change."""
    from gradguard.lint.files import display_path
    from gradguard.lint.fixer import fix_source

    sel = Selection(args)
    unsafe = bool(args.unsafe_fixes)
    fixed = files_changed = skipped_unsafe = failed = 0
    out = sys.stderr if quiet_summary else sys.stdout
    for path in sel.files:
        shown = display_path(path)
        try:
            raw, source = _read(path)
        except (OSError, UnicodeDecodeError, LookupError) as exc:
            print(f"{shown}: cannot read file: {exc}", file=sys.stderr)
            failed += 1
            continue
        try:
            result = fix_source(source, shown, sel.codes, unsafe=unsafe)
            from gradguard.lint.engine import lint_source

            left = lint_source(result.source, shown, sel.codes)
        except Exception as exc:  # a bug in a fix must not lose the user's other files
            print(f"gradguard: internal error while fixing {shown}: {type(exc).__name__}: {exc} "
                  f"(please report this)", file=sys.stderr)
            failed += 1
            continue
        skipped_unsafe += sum(1 for d in left if d.fix is not None and not d.fix.safe and not unsafe)
        for d, reason in result.failed:
            print(f"{shown}:{d.line}:{d.col}: {d.code} could not fix: {reason}", file=sys.stderr)
        failed += len(result.failed)
        if result.source != source:
            files_changed += 1
            fixed += len(result.fixed)
            write_or_diff(path, shown, source, result.source, args.diff, raw)
    verb = "Would fix" if args.diff else "Fixed"
    msg = (f"{verb} {fixed} problem{'s' if fixed != 1 else ''} in "
           f"{files_changed} file{'s' if files_changed != 1 else ''}.")
    if skipped_unsafe:
        msg += f" {skipped_unsafe} unsafe fix{'es' if skipped_unsafe != 1 else ''} not applied (use --unsafe-fixes)."
    print(msg, file=sys.stderr if args.diff else out)
    if args.diff:
        return 1 if files_changed else 0
    return 1 if failed else 0


__all__ = ["add_arguments", "run", "UsageError"]
