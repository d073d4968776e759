"""Diagnostics, fixes and the rule base class (one class per rule, TorchFix style)."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Iterator, Optional, Protocol

if TYPE_CHECKING:
    from gradguard.lint.values import Facts

SAFE, UNSAFE, SOMETIMES, NONE = "safe", "unsafe", "sometimes", "none"
# Rule-level fix availability, as ruff has it: does every finding come with a fix?
ALWAYS, NEVER = "always", "never"
AVAILABILITY = (ALWAYS, SOMETIMES, NEVER)


class Located(Protocol):
    """An AST node with a source position: expressions, statements, keywords, arguments."""

    lineno: int
    col_offset: int
    end_lineno: Optional[int]
    end_col_offset: Optional[int]


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
    replacement: str = ""  # for kind "twin": the statement's new text (from _findings.twins)

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

    def span(self, node: Located) -> tuple[int, int, int, int]:
        line, end_line = node.lineno, getattr(node, "end_lineno", None) or node.lineno
        return (line, self.char_col(line, node.col_offset), end_line,
                self.char_col(end_line, getattr(node, "end_col_offset", None) or node.col_offset))

    def fix(self, kind: str, node: Located, safe: bool, title: str, replacement: str = "") -> Fix:
        return Fix(kind, *self.span(node), safe=safe, title=title, replacement=replacement)

    def segment(self, node: Located) -> Optional[str]:
        """The source text of a one-line node, else None."""
        if getattr(node, "end_lineno", None) != node.lineno or not 0 < node.lineno <= len(self.lines):
            return None
        text = self.lines[node.lineno - 1]
        raw = text.encode("utf-8")
        return raw[node.col_offset:node.end_col_offset].decode("utf-8", "replace")


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
    # The applicability a finding's fix can have: all safe | all unsafe | per site
    # ("sometimes") | no fix ("none").  A fix that can turn a running program into a
    # raising one is unsafe.
    fix_safety: ClassVar[str] = NONE
    # Whether findings come with a fix: always | sometimes | never (default: never
    # when fix_safety is none, else sometimes).
    fix_availability: ClassVar[str] = ""
    frameworks: ClassVar[frozenset] = frozenset({"torch"})
    doc: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("fix_availability"):
            cls.fix_availability = NEVER if cls.fix_safety == NONE else SOMETIMES
        if cls.code:
            if cls.code in _REGISTRY:
                raise RuntimeError(f"duplicate rule code {cls.code}")
            _REGISTRY[cls.code] = cls

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:  # pragma: no cover - abstract
        raise NotImplementedError

    def diagnostic(self, ctx: FileContext, node: Located, message: str, fix: Optional[Fix] = None) -> Diagnostic:
        line, col, end_line, end_col = ctx.span(node)
        return Diagnostic(ctx.path, line, col + 1, self.code, message, self.name, end_line, end_col + 1, fix)


def all_rules() -> dict[str, type[Rule]]:
    """Every registered rule by code, sorted.

    The rule classes register themselves when ``gradguard.lint.rules`` is imported,
    which importing the ``gradguard.lint`` package (and so any of its modules) does:
    this module never imports the rules, so there is no ``base <-> rules`` cycle."""
    return dict(sorted(_REGISTRY.items()))
