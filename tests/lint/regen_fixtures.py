"""Regenerate the expected ``.txt``/``.out.py`` files from the current linter.

Run ``python tests/lint/regen_fixtures.py`` after changing a rule, then review the
diff: the fixtures are the specification, this script only saves typing.
"""
from __future__ import annotations

import sys
from pathlib import Path

from gradguard.lint.engine import lint_source
from gradguard.lint.fixer import fix_source

ROOT = Path(__file__).parent / "fixtures"


def main() -> int:
    for d in sorted(p for p in ROOT.iterdir() if p.is_dir()):
        for case in sorted(d.glob("*.py")):
            if case.name.endswith((".in.py", ".out.py")):
                continue
            diags = lint_source(case.read_text(), case.name, [d.name])
            case.with_suffix(".txt").write_text("".join(f"{x.line}:{x.col} {x.code} {x.message}\n" for x in diags))
        for inp in sorted(d.glob("*.in.py")):
            result = fix_source(inp.read_text(), inp.name, [d.name], unsafe="unsafe" in inp.name)
            inp.with_name(inp.name.replace(".in.py", ".out.py")).write_text(result.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
