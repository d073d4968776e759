"""docs/rules/ is generated from the rules' and runtime kinds' own docs: it must be current."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_rule_docs", ROOT / "tools" / "gen_rule_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_rule_and_code_has_a_current_page():
    gen = _generator()
    wanted = gen.pages()
    assert "GGR101.md" in wanted and "GG101.md" in wanted and "README.md" in wanted
    for name, text in wanted.items():
        path = ROOT / "docs" / "rules" / name
        assert path.exists(), f"{path} missing: run python tools/gen_rule_docs.py"
        assert path.read_text() == text, f"{path} is stale: run python tools/gen_rule_docs.py"
    on_disk = {p.name for p in (ROOT / "docs" / "rules").glob("*.md")}
    assert on_disk == set(wanted), f"pages for no rule: {sorted(on_disk - set(wanted))}"


def test_check_mode_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    gen = _generator()
    monkeypatch.setattr(gen, "RULES_DIR", tmp_path)
    assert gen.main(["--check"]) == 1
    assert "GGR101.md is out of date" in capsys.readouterr().out
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    (tmp_path / "GGR101.md").write_text("edited by hand\n")
    assert gen.main(["--check"]) == 1
