"""gradguard: stop in-place tensor writes from breaking PyTorch autograd.

Public API::

    gradguard.detect(...)            runtime sanitizer (context manager / decorator)
    gradguard.DetectSession          what detect() returns: .conflicts, .report()
    gradguard.protect(...)           copy-on-write, so writes cannot corrupt saved tensors
    gradguard.ProtectSession         what protect() returns: .copied_bytes, .copy_sites
    gradguard.verify(step, *args)    gradients vs a reference immune to in-place writes
    gradguard.Conflict               one finding (with Mutation, SavedBy, TensorInfo, Frame)
    gradguard.readonly(*tensors)     tensors nothing may write (ReadOnlyTensorError at the write)
    gradguard.xray(...)              what backward keeps: saved tensors of one training step
    gradguard.write_html(...)        a self-contained HTML page of a session's report
    gradguard.InplaceConflictError   raised in "raise" mode (a RuntimeError); the rest of
                                     the exception and warning tree is in gradguard.errors

Submodules are private; everything public is re-exported here. Torch is imported lazily,
on first use of a name that needs it, so that `gradguard lint` starts fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradguard.errors import GradguardError as GradguardError
from gradguard.errors import InplaceConflictError as InplaceConflictError
from gradguard.errors import InplaceConflictWarning as InplaceConflictWarning
from gradguard.errors import ReadOnlyTensorError as ReadOnlyTensorError
from gradguard.errors import UsageError as UsageError

if TYPE_CHECKING:  # what type checkers see; at run time the names load lazily below
    from gradguard._detect.session import DetectSession as DetectSession
    from gradguard._detect.session import detect as detect
    from gradguard._explain.html import write_html as write_html
    from gradguard._findings.model import Conflict as Conflict
    from gradguard._findings.model import Frame as Frame
    from gradguard._findings.model import Mutation as Mutation
    from gradguard._findings.model import SavedBy as SavedBy
    from gradguard._findings.model import TensorInfo as TensorInfo
    from gradguard._protect.session import CopySite as CopySite
    from gradguard._protect.session import ProtectSession as ProtectSession
    from gradguard._protect.session import protect as protect
    from gradguard._readonly.session import ReadOnlySession as ReadOnlySession
    from gradguard._readonly.session import readonly as readonly
    from gradguard._verify.verify import GradDifference as GradDifference
    from gradguard._verify.verify import VerifyResult as VerifyResult
    from gradguard._verify.verify import verify as verify
    from gradguard._xray.session import XraySession as XraySession
    from gradguard._xray.session import xray as xray

__version__ = "0.1.0"

_LAZY = {
    "detect": "gradguard._detect.session",
    "DetectSession": "gradguard._detect.session",
    "protect": "gradguard._protect.session",
    "ProtectSession": "gradguard._protect.session",
    "CopySite": "gradguard._protect.session",
    "Conflict": "gradguard._findings.model",
    "Mutation": "gradguard._findings.model",
    "SavedBy": "gradguard._findings.model",
    "TensorInfo": "gradguard._findings.model",
    "Frame": "gradguard._findings.model",
    "verify": "gradguard._verify.verify",
    "VerifyResult": "gradguard._verify.verify",
    "GradDifference": "gradguard._verify.verify",
    "write_html": "gradguard._explain.html",
    "readonly": "gradguard._readonly.session",
    "ReadOnlySession": "gradguard._readonly.session",
    "xray": "gradguard._xray.session",
    "XraySession": "gradguard._xray.session",
}

__all__ = sorted([*_LAZY, "GradguardError", "InplaceConflictError", "InplaceConflictWarning",
                  "ReadOnlyTensorError", "UsageError", "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext gradguard``: see `gradguard.integrations.ipython`."""
    from gradguard.integrations.ipython import load_ipython_extension as load

    load(shell)


def unload_ipython_extension(shell: Any) -> None:
    from gradguard.integrations.ipython import unload_ipython_extension as unload

    unload(shell)
