"""What gradguard found: `Conflict` and the records it is made of.

These are plain data, safe to keep after a training run: they hold no tensors, only
descriptions (dtype, shape, versions, source lines).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from gradguard._findings.kinds import CATALOGUE

@dataclass(frozen=True)
class Frame:
    """One source frame: absolute file path, line, function and the stripped source line."""

    file: str
    line: int
    function: str
    source: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


@dataclass
class Mutation:
    """The in-place write."""

    op: str
    stack: list[Frame] = field(default_factory=list)
    via: Optional[str] = None  # e.g. "torch.optim" when an optimizer step did the write
    alias: Optional[str] = None  # e.g. ".data" when the write went through a .data alias

    @property
    def site(self) -> Optional[Frame]:
        return self.stack[0] if self.stack else None


@dataclass
class SavedBy:
    """The forward op that saved the tensor, and the backward node that needed it."""

    op: Optional[str]
    node: Optional[str]
    stack: list[Frame] = field(default_factory=list)

    @property
    def site(self) -> Optional[Frame]:
        return self.stack[0] if self.stack else None


@dataclass
class TensorInfo:
    """The tensor that was damaged, described, never its values."""

    dtype: str
    shape: tuple[int, ...]
    device: str
    version_saved: Optional[int] = None
    version_now: Optional[int] = None
    name: Optional[str] = None  # module path of a parameter or buffer, e.g. "disc.fc.weight"
    produced_by: Optional[str] = None  # backward node of the op that produced it
    is_parameter: bool = False

    def short(self) -> str:
        """Compact form such as ``f32[64,128] cpu v1->v2``."""
        dtype = _SHORT_DTYPES.get(self.dtype, self.dtype.replace("torch.", ""))
        text = f"{dtype}[{','.join(map(str, self.shape))}] {self.device}"
        if self.version_saved is not None:
            text += f" v{self.version_saved}"
            if self.version_now is not None and self.version_now != self.version_saved:
                text += f"->v{self.version_now}"
        return text


_SHORT_DTYPES = {
    "torch.float32": "f32", "torch.float64": "f64", "torch.float16": "f16",
    "torch.bfloat16": "bf16", "torch.int64": "i64", "torch.int32": "i32",
    "torch.int16": "i16", "torch.int8": "i8", "torch.uint8": "u8", "torch.bool": "bool",
    "torch.complex64": "c64", "torch.complex128": "c128",
}


@dataclass
class Conflict:
    """One in-place write that broke (or would silently corrupt) a backward pass."""

    kind: str
    write: Optional[Mutation] = None
    saved: Optional[SavedBy] = None
    tensor: Optional[TensorInfo] = None
    overlap: Optional[bool] = None  # did the write touch bytes of the saved tensor?
    aliasing: dict[str, Any] = field(default_factory=dict)
    fix: str = ""
    detail: str = ""  # what happened, one sentence; e.g. the PyTorch error it explains
    repaired: bool = False
    # The autograd graph around the conflict, as plain strings (see gradguard._explain.picture);
    # captured when backward confirms it, None otherwise. Not part of to_dict().
    graph: Optional[dict[str, Any]] = field(default=None, repr=False, compare=False)

    @property
    def code(self) -> str:
        return CATALOGUE[self.kind].code

    @property
    def title(self) -> str:
        return CATALOGUE[self.kind].title

    def dedup_key(self) -> tuple:
        w = self.write.site if self.write else None
        s = self.saved.site if self.saved else None
        return (
            self.kind,
            (w.file, w.line) if w else None,
            (s.file, s.line) if s else None,
            self.tensor.name if self.tensor else None,
        )

    def summary(self) -> str:
        """The greppable one-line summary: ``<kind> <file>:<line> in <func> (<op>)``."""
        site = self.write.site if self.write else None
        if site is None and self.saved is not None:
            site = self.saved.site
        where = f"{site.file}:{site.line} in {site.function}" if site else "<unknown>"
        op = self.write.op if self.write else (self.saved.op if self.saved else "?")
        return f"{self.kind} {where} ({op})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see `gradguard._findings.schema`, the one writer and reader)."""
        from gradguard._findings.schema import conflict_to_dict

        return conflict_to_dict(self)


for _public in (Frame, Mutation, SavedBy, TensorInfo, Conflict):
    _public.__module__ = "gradguard"
