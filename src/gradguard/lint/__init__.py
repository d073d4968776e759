"""Static half of gradguard: find in-place autograd hazards in source, and fix them.

    lint_source(source, path)   -> list[Diagnostic]   (stdlib ast only; no torch import)
    all_rules()                 -> {code: Rule class}
    fix_source(...)             in gradguard.lint.fixer (libcst)

CLI entry points: gradguard._cli.lint (lint), .fix_cli (fix), .rule_cli (rule).
"""
from __future__ import annotations

from gradguard.lint.base import Diagnostic, Fix, Rule, all_rules
from gradguard.lint.engine import lint_file, lint_source, resolve_selection

__all__ = ["Diagnostic", "Fix", "Rule", "all_rules", "lint_file", "lint_source", "resolve_selection"]
