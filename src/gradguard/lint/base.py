"""Diagnostics, fixes and the rule base class (one class per rule, TorchFix style)."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Iterator, Optional

if TYPE_CHECKING:
    from gradguard.lint.values import Facts

SAFE, UNSAFE, SOMETIMES, NONE = "safe", "unsafe", "sometimes", "none"


@dataclass(frozen=True)
class Fix:
    """A rewrite of one node, located by its span (1-based lines, 0-based character columns)."""

    kind: str  # see gradguard.lint.fixer.FIX_KINDS
    line: int
    col: int
    end_line: int
    end_col: int
    safe: bool
    title: str

    @property
    def applicability(self) -> str:
        return SAFE if self.safe else UNSAFE


@dataclass
class Diagnostic:
    path: str
    line: int  # 1-based
    col: int  # 1-based, in characters
    code: str
    message: str
    name: str = ""
    end_line: int = 0
    end_col: int = 0
    fix: Optional[Fix] = None

    def sort_key(self) -> tuple:
        return (self.path, self.line, self.col, self.code)


@dataclass
class FileContext:
    """Everything a rule may look at for one file."""

    path: str
    source: str
    tree: ast.Module
    facts: "Facts"
    lines: list = field(default_factory=list)

    def char_col(self, line: int, byte_col: int) -> int:
        """ast columns count UTF-8 bytes; editors and libcst count characters."""
        if 0 < line <= len(self.lines):
            text = self.lines[line - 1]
            if text.isascii():
                return byte_col
            return len(text.encode("utf-8")[:byte_col].decode("utf-8", "replace"))
        return byte_col

    def span(self, node: ast.AST) -> tuple[int, int, int, int]:
        line, end_line = node.lineno, getattr(node, "end_lineno", None) or node.lineno
        return (line, self.char_col(line, node.col_offset), end_line,
                self.char_col(end_line, getattr(node, "end_col_offset", None) or node.col_offset))

    def fix(self, kind: str, node: ast.AST, safe: bool, title: str) -> Fix:
        return Fix(kind, *self.span(node), safe=safe, title=title)


_REGISTRY: dict[str, type["Rule"]] = {}


class Rule:
    """A lint rule.  Subclasses set the class attributes and implement ``check``.

    ``doc`` is Markdown with the sections "What it does", "Why is this bad?",
    "Example" (with "Use instead:") and "Fix safety" -- the format of ruff's rule pages.
    """

    code: ClassVar[str] = ""
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line, shown in rule tables
    default: ClassVar[bool] = True
    fix_safety: ClassVar[str] = NONE  # safe | unsafe | sometimes | none
    frameworks: ClassVar[frozenset] = frozenset({"torch"})
    doc: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code:
            if cls.code in _REGISTRY:
                raise RuntimeError(f"duplicate rule code {cls.code}")
            _REGISTRY[cls.code] = cls

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:  # pragma: no cover - abstract
        raise NotImplementedError

    def diagnostic(self, ctx: FileContext, node: ast.AST, message: str, fix: Optional[Fix] = None) -> Diagnostic:
        line, col, end_line, end_col = ctx.span(node)
        return Diagnostic(ctx.path, line, col + 1, self.code, message, self.name, end_line, end_col + 1, fix)


def all_rules() -> dict[str, type[Rule]]:
    """Every registered rule by code, sorted.

    The rule classes register themselves when ``gradguard.lint.rules`` is imported,
    which importing the ``gradguard.lint`` package (and so any of its modules) does:
    this module never imports the rules, so there is no ``base <-> rules`` cycle."""
    return dict(sorted(_REGISTRY.items()))
