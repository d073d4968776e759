"""``gradguard rule GG101`` prints a rule's documentation; ``--list`` lists all rules."""
from __future__ import annotations

import argparse
import textwrap

from gradguard.errors import UsageError
from gradguard.lint.base import all_rules


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("code", nargs="?", metavar="CODE", help="a rule code such as GG101")
    parser.add_argument("--list", action="store_true", help="list every rule")


def render(code: str) -> str:
    """The Markdown documentation of one rule."""
    rules = all_rules()
    r = rules.get(code.upper())
    if r is None:
        raise UsageError(f"unknown rule {code!r}; known rules: {', '.join(rules)}")
    default = "on by default" if r.default else "off by default (enable with --select or extend-select)"
    head = f"# {r.code} {r.name}\n\n{r.summary}.\n\nFix: {r.fix_safety}. Status: {default}.\n"
    return head + textwrap.dedent(r.doc).rstrip() + "\n"


def table() -> str:
    rows = ["| Code | Name | Default | Fix | Summary |", "|---|---|---|---|---|"]
    for code, r in all_rules().items():
        rows.append(f"| {code} | {r.name} | {'on' if r.default else 'off'} | {r.fix_safety} | {r.summary} |")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if args.list or not args.code:
        for code, r in all_rules().items():
            print(f"{code}  {r.name:34s} {'on ' if r.default else 'off'}  fix={r.fix_safety:9s} {r.summary}")
        return 0
    print(render(args.code), end="")
    return 0
