"""gradguard: stop in-place tensor writes from breaking PyTorch autograd.

Public API::

    gradguard.detect(...)            runtime sanitizer (context manager / decorator)
    gradguard.DetectSession          what detect() returns: .conflicts, .report()
    gradguard.protect(...)           copy-on-write, so writes cannot corrupt saved tensors
    gradguard.ProtectSession         what protect() returns: .copied_bytes, .copy_sites
    gradguard.Conflict               one finding (with Mutation, SavedBy, TensorInfo, Frame)
    gradguard.InplaceConflictError   raised in "raise" mode (a RuntimeError)
    gradguard.verify(step, *args)    gradients vs a reference immune to in-place writes

Submodules are private; everything public is re-exported here. Torch is imported lazily
so that `gradguard lint` starts fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from gradguard.errors import GradguardError, InplaceConflictError, UsageError

__version__ = "0.1.0"

_LAZY = {
    "detect": "gradguard._detect",
    "DetectSession": "gradguard._detect",
    "InplaceConflictWarning": "gradguard._detect",
    "protect": "gradguard._protect",
    "ProtectSession": "gradguard._protect",
    "CopySite": "gradguard._protect",
    "Conflict": "gradguard._conflict",
    "Mutation": "gradguard._conflict",
    "SavedBy": "gradguard._conflict",
    "TensorInfo": "gradguard._conflict",
    "Frame": "gradguard._conflict",
    "verify": "gradguard._verify",
    "VerifyResult": "gradguard._verify",
    "GradDifference": "gradguard._verify",
    "write_html": "gradguard._html",
}

__all__ = sorted([*_LAZY, "GradguardError", "InplaceConflictError", "UsageError", "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
