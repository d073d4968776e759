"""Exceptions raised by gradguard.

    GradguardError                    base of everything gradguard raises on purpose
    ├── UsageError                    bad input to the CLI or API (missing file, bad option)
    └── InplaceConflictError          (also a RuntimeError) an in-place write broke autograd;
                                      its message is the full report, `.conflicts` the findings
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from gradguard._findings.model import Conflict


class GradguardError(Exception):
    """Base class of the errors gradguard raises on purpose."""


class UsageError(GradguardError):
    """Bad input: a missing file, an unknown option, an unparsable source file."""


class InplaceConflictError(GradguardError, RuntimeError):
    """An in-place write destroyed a tensor that autograd saved for backward.

    A ``RuntimeError`` so that code catching PyTorch's own "modified by an inplace
    operation" error keeps working.
    """

    def __init__(self, message: str, conflicts: Sequence["Conflict"] = ()) -> None:
        super().__init__(message)
        self.conflicts = list(conflicts)
