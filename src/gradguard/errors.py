"""Everything gradguard raises or warns on purpose.

    Exception
    └── GradguardError                base of every error gradguard raises on purpose
        ├── UsageError                bad input to the CLI or API (missing file, bad option)
        ├── InplaceConflictError      (also a RuntimeError) an in-place write broke autograd;
        │                             its message is the full report, `.conflicts` the findings
        └── ReadOnlyTensorError       (also a RuntimeError) a write to a tensor made read-only
                                      with `gradguard.readonly()`, raised before its bytes
                                      change (or at exit, for ``checksum=True``)

    UserWarning
    └── InplaceConflictWarning        one per conflict with ``on_conflict="warn"``
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from gradguard._findings.model import Conflict

__all__ = ["GradguardError", "UsageError", "InplaceConflictError", "InplaceConflictWarning",
           "ReadOnlyTensorError"]


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


class ReadOnlyTensorError(GradguardError, RuntimeError):
    """A write to a tensor listed in `gradguard.readonly()`.

    ``.tensor`` is the tensor's name (e.g. ``model.fc.weight``), ``.op`` the writing
    operation, ``.where`` the writing line as ``file:line`` (None when found only by the
    checksum at exit: the write was made outside PyTorch's Python API).
    """

    def __init__(self, message: str, tensor: str = "", op: str = "",
                 where: "str | None" = None) -> None:
        super().__init__(message)
        self.tensor = tensor
        self.op = op
        self.where = where


class InplaceConflictWarning(UserWarning):
    """Issued for each conflict in ``on_conflict="warn"`` mode, at the writing line."""


for _public in (GradguardError, UsageError, InplaceConflictError, InplaceConflictWarning,
                ReadOnlyTensorError):
    _public.__module__ = "gradguard"
