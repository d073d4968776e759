"""What gradguard found: `Conflict` and the records it is made of.

These are plain data, safe to keep after a training run: they hold no tensors, only
descriptions (dtype, shape, versions, source lines).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

# kind -> (code, one-line title). Codes are stable: tools and people grep for them.
KINDS: dict[str, tuple[str, str]] = {
    "saved-tensor-mutated": (
        "GGR101",
        "a tensor saved for backward was modified by an in-place write",
    ),
    "saved-tensor-mutated-outside-pytorch": (
        "GGR102",
        "a tensor saved for backward was modified outside PyTorch (e.g. through a NumPy view)",
    ),
    "ctx-attribute-mutated": (
        "GGR103",
        "a tensor a custom autograd.Function kept on ctx was modified before its backward",
    ),
    "checkpoint-input-mutated": (
        "GGR104",
        "an input of a checkpointed region was modified before the region was recomputed",
    ),
    "leaf-inplace": (
        "GGR201",
        "in-place write into a leaf tensor that requires grad",
    ),
    "leaf-view-inplace": (
        "GGR202",
        "in-place write into a view of a leaf tensor that requires grad",
    ),
    "multi-output-view-inplace": (
        "GGR203",
        "in-place write into an output of a view op that returns several views",
    ),
    "inference-tensor-inplace": (
        "GGR204",
        "in-place write into an inference tensor outside inference mode",
    ),
}


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
        return KINDS[self.kind][0]

    @property
    def title(self) -> str:
        return KINDS[self.kind][1]

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
        """JSON-ready form (schema version 1, see README)."""

        def frames(stack: list[Frame]) -> list[dict[str, Any]]:
            return [asdict(f) for f in stack]

        def site(stack: list[Frame]) -> dict[str, Any]:
            top = stack[0] if stack else None
            return {
                "file": top.file if top else None,
                "line": top.line if top else None,
                "function": top.function if top else None,
                "stack": frames(stack),
            }

        return {
            "kind": self.kind,
            "code": self.code,
            "title": self.title,
            "mutation": (
                {"op": self.write.op, "via": self.write.via, "alias": self.write.alias,
                 **site(self.write.stack)}
                if self.write else None
            ),
            "saved": (
                {"op": self.saved.op, "node": self.saved.node, **site(self.saved.stack)}
                if self.saved else None
            ),
            "tensor": (
                {**asdict(self.tensor), "shape": list(self.tensor.shape)} if self.tensor else None
            ),
            "overlap": self.overlap,
            "aliasing": self.aliasing,
            "fix": self.fix,
            "detail": self.detail,
            "repaired": self.repaired,
        }
