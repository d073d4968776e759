"""``gradguard rule CODE`` prints the documentation of a lint rule (GG101) or a runtime
code (GGR101); ``--list`` lists them all. Neither catalogue imports torch."""
from __future__ import annotations

import argparse

from gradguard._findings.kinds import BY_CODE, RuntimeKind
from gradguard.errors import UsageError
from gradguard.lint import all_rules
from gradguard.lint.docs import rule_page


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("code", nargs="?", metavar="CODE",
                        help="a lint rule code such as GG101, or a runtime code such as GGR101")
    parser.add_argument("--list", action="store_true", help="list every rule and runtime code")


def render_kind(kind: RuntimeKind) -> str:
    """The Markdown documentation of one runtime code."""
    head = (f"# {kind.code} {kind.slug}\n\n{kind.title[0].upper()}{kind.title[1:]}.\n\n"
            "Found at run time by `gradguard run`, `gradguard.detect()`, `gradguard.protect()` "
            "and `pytest --gradguard`.\n\n")
    return head + kind.doc


def render(code: str) -> str:
    """The Markdown documentation of one lint rule or runtime code."""
    code = code.upper()
    kind = BY_CODE.get(code)
    if kind is not None:
        return render_kind(kind)
    rules = all_rules()
    r = rules.get(code)
    if r is None:
        raise UsageError(f"unknown rule {code!r}; lint rules: {', '.join(rules)}; runtime "
                         f"codes: {', '.join(BY_CODE)}")
    return rule_page(r)


def table() -> str:
    rows = ["| Code | Name | Default | Fix | Summary |", "|---|---|---|---|---|"]
    for code, r in all_rules().items():
        rows.append(f"| {code} | {r.name} | {'on' if r.default else 'off'} | {r.fix_safety} | {r.summary} |")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if args.list or not args.code:
        print("lint rules (gradguard lint):")
        for code, r in all_rules().items():
            status = "on " if r.default else "off"
            print(f"  {code}  {r.name:34s} {status}  fix={r.fix_safety:9s} {r.summary}")
        print("runtime codes (gradguard run / detect / protect):")
        for code, kind in BY_CODE.items():
            print(f"  {code} {kind.slug:36s} {kind.title}")
        return 0
    print(render(args.code), end="")
    return 0
