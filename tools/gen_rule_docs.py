"""Write docs/rules/<CODE>.md for every lint rule from the rule's own doc.

    python tools/gen_rule_docs.py           # (re)write the pages
    python tools/gen_rule_docs.py --check   # exit 1 if a page is missing or out of date
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gradguard.lint.docs import pages  # noqa: E402


def main(argv: list) -> int:
    out_dir = ROOT / "docs" / "rules"
    want = pages()
    stale = [name for name, text in want.items()
             if not (out_dir / name).exists() or (out_dir / name).read_text() != text]
    extra = sorted(p.name for p in out_dir.glob("*.md") if p.name not in want) if out_dir.exists() else []
    if "--check" in argv:
        for name in stale:
            print(f"docs/rules/{name} is out of date (run python tools/gen_rule_docs.py)")
        for name in extra:
            print(f"docs/rules/{name} belongs to no rule")
        return 1 if stale or extra else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (out_dir / name).write_text(want[name])
    for name in extra:
        (out_dir / name).unlink()
    print(f"wrote {len(stale)} page(s), removed {len(extra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
