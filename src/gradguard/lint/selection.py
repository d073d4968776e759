"""What one `gradguard lint` / `gradguard fix` run covers: the shared command-line
options, the files and the rule codes (command line over pyproject.toml)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gradguard.lint.config import load_config
from gradguard.lint.engine import resolve_selection
from gradguard.lint.files import DEFAULT_EXCLUDES, Excluder, discover, read_gitignore


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


def silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


