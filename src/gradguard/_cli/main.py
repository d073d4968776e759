"""The ``gradguard`` command line.

Each subcommand lives in its own module that exposes ``add_arguments(parser)`` and
``run(args) -> int`` (and ``split_argv(tokens)`` if it runs another program whose
arguments it must not parse); this module only wires them together and turns our own
errors into one-line messages with exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from gradguard import __version__
from gradguard.errors import GradguardError

# name -> (module, one-line help). Modules are imported lazily so that
# `gradguard lint` does not pay for importing torch.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "lint": ("gradguard._cli.lint", "find in-place autograd hazards in Python source"),
    "fix": ("gradguard._cli.fix", "rewrite in-place autograd hazards out of place"),
    "rule": ("gradguard._cli.rule", "print the documentation of a lint rule"),
    "run": ("gradguard._cli.run", "run a script or module under the in-place write sanitizer"),
    "xray": ("gradguard._cli.xray", "run a training script and show what backward keeps in one step"),
}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"gradguard: error: {message} (see `gradguard --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="gradguard",
        description="Find and fix in-place writes that break PyTorch autograd.",
    )
    parser.add_argument("--version", action="version", version=f"gradguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = None
    if argv and argv[0] in SUBCOMMANDS:
        # A subcommand that runs another program (`run`) splits off that program's
        # command line first, so argparse never reads the program's own options.
        split = getattr(importlib.import_module(SUBCOMMANDS[argv[0]][0]), "split_argv", None)
        if split is not None:
            ours, passthrough = split(argv[1:])
            argv = [argv[0], *ours]
    args = parser.parse_args(argv)
    if passthrough is not None:
        args.passthrough = passthrough
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._module.run(args) or 0)
    except GradguardError as exc:
        print(f"gradguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
