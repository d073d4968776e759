"""Static half of gradguard: find in-place autograd hazards in source, and fix them.

    lint_source(source, path)   -> list[Diagnostic]   (stdlib ast only; no torch import)
    all_rules()                 -> {code: Rule class}; each has code, name, summary,
                                   default, fix_safety (always|sometimes|never), doc
    fix_source(...)             in gradguard.lint.fixer (libcst)

Layout: ``engine`` (parse, run rules, noqa) over ``analysis`` (the data-flow driver:
``names``, ``values``, ``expressions``, ``statements``, ``modules``, ``summaries``),
``rules/`` (one class per rule: ``hazards`` GG1xx, ``advice`` GG2xx, ``noisy`` GG4xx),
``fixer`` (libcst rewrites), ``output`` (text/JSON/SARIF), ``config``, ``files``,
``selection`` (what the CLI lints), ``docs`` (generated rule pages).
The out-of-place twin of a write comes from ``gradguard._findings.twins``.
"""
from __future__ import annotations

from gradguard.lint import rules as _rules  # noqa: F401  (registers the rule classes)
from gradguard.lint.base import Diagnostic, Fix, Rule, all_rules
from gradguard.lint.engine import lint_file, lint_source, resolve_selection

__all__ = ["Diagnostic", "Fix", "Rule", "all_rules", "lint_file", "lint_source", "resolve_selection"]
