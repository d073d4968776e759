"""`gradguard.readonly()`: tensors that nothing may write.

A `ReadOnlySession` watches the storages of its tensors through the core's watched
storages (`gradguard._core.runtime.Runtime.watch`): every intercepted write (an in-place
method, ``out=``, ``.data =``, ``set_``, an optimizer's ``_foreach_*_``) whose byte range
overlaps a listed tensor's -- through any view, base, ``.data`` or ``.detach()`` alias,
since aliasing is decided by storage identity and byte range -- raises
`ReadOnlyTensorError` before the bytes change. Writes PyTorch's Python API does not see
(numpy through ``.numpy()``, C++ kernels writing buffers, ctypes) are caught at exit by
``checksum=True``. It saves no tensor and installs no saved-tensor hooks, so a program
that writes none of its tensors runs exactly as without it.
"""
from __future__ import annotations

import linecache
import zlib
from typing import Any, Iterable, Optional, Sequence

import torch

from gradguard._core import names, sites
from gradguard._core.runtime import runtime
from gradguard._core.session import Session
from gradguard.errors import ReadOnlyTensorError, UsageError

__all__ = ["ReadOnlySession", "readonly"]


def _describe(t: torch.Tensor) -> str:
    dtype = str(t.dtype).replace("torch.", "")
    short = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64",
             "int64": "i64", "int32": "i32", "bool": "bool", "uint8": "u8"}.get(dtype, dtype)
    return f"{short}[{', '.join(str(int(s)) for s in t.shape)}]"


def _checksum(t: torch.Tensor) -> int:
    with torch.no_grad():
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        return zlib.crc32(raw.numpy().tobytes())


def _flatten(items: Iterable[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, torch.nn.Module):
            out.extend(item.parameters())
            out.extend(b for b in item.buffers() if b is not None)
        elif isinstance(item, (list, tuple, set, frozenset)) or hasattr(item, "__next__"):
            out.extend(_flatten(item))
        else:
            raise UsageError(f"gradguard.readonly() takes tensors or modules, not "
                             f"{type(item).__name__}")
    return out


class _Entry:
    __slots__ = ("tensor", "name", "checksum", "watch")

    def __init__(self, tensor: torch.Tensor, name: Optional[str]) -> None:
        self.tensor = tensor
        self.name = name  # None: named when a write needs it (module path, or shape)
        self.checksum: Optional[int] = None
        self.watch: Any = None

    def display(self) -> str:
        if self.name is None:
            path, _ = names.module_path(self.tensor)
            self.name = path or _describe(self.tensor)
        return self.name


class ReadOnlySession(Session):
    """What `gradguard.readonly()` returns: active from the call until `release()` (or
    the end of its ``with`` block). ``.writes_blocked`` counts the writes it stopped."""

    saves = False  # watches writes only: no saved-tensor hooks, never the innermost

    def __init__(self, tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                 checksum: bool = False) -> None:
        super().__init__()
        if name is not None and not isinstance(name, str):
            raise UsageError("gradguard.readonly(name=...) must be a string")
        self._tensors = list(tensors)
        self._name = name
        self.checksum = checksum
        self.writes_blocked = 0
        self._entries: list[_Entry] = []

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "ReadOnlySession":
        if not self.active:
            Session.__enter__(self)
        return self

    def release(self) -> None:
        """Stop guarding; with ``checksum=True`` raise `ReadOnlyTensorError` if a listed
        tensor's bytes changed since the start (a write PyTorch's Python API did not see)."""
        if self.active:
            Session.__exit__(self, None, None, None)

    def __enter__(self) -> "ReadOnlySession":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        if self.active:
            Session.__exit__(self, *exc_info)

    def on_enter(self) -> None:
        many = len(self._tensors) > 1
        for i, t in enumerate(self._tensors):
            label = None if self._name is None else (f"{self._name}[{i}]" if many else self._name)
            entry = _Entry(t, label)
            entry.watch = runtime.watch(t, self, entry)
            if self.checksum or entry.watch is None:
                entry.checksum = _checksum(t)
            self._entries.append(entry)

    def on_exit(self) -> None:
        entries, self._entries = self._entries, []
        changed = []
        for entry in entries:
            if entry.watch is not None:
                runtime.unwatch(entry.watch)
            if entry.checksum is not None and _checksum(entry.tensor) != entry.checksum:
                changed.append(entry)
        if changed:
            which = ", ".join(repr(e.display()) for e in changed)
            raise ReadOnlyTensorError(
                f"read-only tensor {which} changed during gradguard.readonly(): written "
                "outside PyTorch's Python API (numpy through .numpy(), a C++ kernel, "
                "ctypes), so the writing line is unknown; found by checksum=True at exit",
                tensor=changed[0].display(), op="(outside PyTorch)")

    # -- the write ---------------------------------------------------------------------
    def before_watched_write(self, op: str, target: Any, whole: bool,
                             payloads: Sequence[Any]) -> None:
        if not payloads:
            return
        entry: _Entry = payloads[0]
        frame = sites.innermost_user_frame(3)
        if frame is not None:
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            source = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        else:
            where, source = None, ""
        self.writes_blocked += 1
        tensor = entry.display()
        others = [e.display() for e in payloads[1:]]
        also = f" (and {', '.join(repr(o) for o in others)})" if others else ""
        alias = "" if target is entry.tensor else (
            f", through {'its storage' if isinstance(target, torch.UntypedStorage) else 'an alias'}"
            f" ({_describe(target) if isinstance(target, torch.Tensor) else 'storage'})")
        lines = [f"write to read-only tensor {tensor!r}{also} ({_describe(entry.tensor)}) "
                 f"by {op}{alias}, stopped before its bytes changed",
                 f"  at {where or '<unknown>'}"]
        if source:
            lines.append(f"    {source}")
        lines.append("  it was made read-only with gradguard.readonly(); write a copy "
                     "(t.clone()) or release it first")
        raise ReadOnlyTensorError("\n".join(lines), tensor=tensor, op=op, where=where)


def readonly(*tensors: Any, name: Optional[str] = None, checksum: bool = False) -> ReadOnlySession:
    """Make ``tensors`` read-only from now until ``.release()`` or the end of the ``with``
    block: any write to them, through any alias, raises `gradguard.ReadOnlyTensorError`
    at the writing line before their bytes change.

    ``tensors``: tensors, modules (their parameters and buffers) or iterables of them.
    ``name``: what the error calls the tensor (``name[i]`` for the i-th of several);
    default the module path of a parameter or buffer (``model.fc.weight``), else its
    dtype and shape. ``checksum``: also fingerprint their bytes and raise at exit if they
    changed without an intercepted write (numpy, C++ kernels).
    """
    return ReadOnlySession(_flatten(tensors), name=name, checksum=checksum).start()


for _public in (ReadOnlySession, readonly):
    _public.__module__ = "gradguard"
