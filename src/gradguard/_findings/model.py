"""What gradguard found: `Conflict` and the records it is made of.

These are plain data, safe to keep after a training run: they hold no tensors, only
descriptions (dtype, shape, versions, source lines).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from gradguard._findings.kinds import CATALOGUE


@dataclass(frozen=True)
class Frame:
    """One source frame: absolute file path, line, function and the stripped source line."""

    file: str
    line: int
    function: str
    source: str = ""
    library: bool = False  # library code (site-packages, the stdlib), not the user's own

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


def _user_site(stack: list[Frame]) -> Optional[Frame]:
    """The innermost frame of the user's own code; the innermost frame if all are
    library code."""
    for f in stack:
        if not f.library:
            return f
    return stack[0] if stack else None


class _Sited:
    """A record with a stack (innermost first): its innermost frame, and the user's own."""

    stack: list[Frame]

    @property
    def site(self) -> Optional[Frame]:
        return self.stack[0] if self.stack else None

    @property
    def user_site(self) -> Optional[Frame]:
        """The user's own line: the innermost frame outside library code (the line that
        called into the library which made the write or the save)."""
        return _user_site(self.stack)


@dataclass
class Mutation(_Sited):
    """The in-place write."""

    op: str
    stack: list[Frame] = field(default_factory=list)
    via: Optional[str] = None  # e.g. "torch.optim" when an optimizer step did the write
    alias: Optional[str] = None  # e.g. ".data" when the write went through a .data alias
    note: Optional[str] = None  # in a write timeline: e.g. "version 2 after it"


@dataclass
class SavedBy(_Sited):
    """The forward op that saved the tensor, and the backward node that needed it."""

    op: Optional[str]
    node: Optional[str]
    stack: list[Frame] = field(default_factory=list)
    # A ctx attribute: the `ctx.<attr> = ...` line in the Function's forward (the line to
    # change); `stack` is the `.apply(...)` call's.
    assigned: Optional[Frame] = None


@dataclass
class Origin:
    """One step of where a tensor came from: ``what`` it is ("view `b` of parameter
    `model.conv.bias`", "leaf `s` (requires grad)") and the line that made it."""

    what: str
    site: Optional[Frame] = None


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
    # Every write that overlapped the saved bytes, in order, when there was more than one.
    writes: list[Mutation] = field(default_factory=list)
    # Where the tensor came from (leaf kinds): the view it was written through, back to the
    # parameter or the leaf's creation line.
    origin: list[Origin] = field(default_factory=list)
    # The autograd graph around the conflict, as plain strings (see gradguard._explain.picture);
    # captured when backward confirms it, None otherwise. Not part of to_dict().
    graph: Optional[dict[str, Any]] = field(default=None, repr=False, compare=False)

    @property
    def code(self) -> str:
        kind = CATALOGUE.get(self.kind)
        return kind.code if kind else "GGR???"

    @property
    def title(self) -> str:
        kind = CATALOGUE.get(self.kind)
        return kind.title if kind else self.kind

    def dedup_key(self) -> tuple[Any, ...]:
        w = self.write.user_site if self.write else None
        s = self.saved.user_site if self.saved else None
        return (
            self.kind,
            (w.file, w.line) if w else None,
            (s.file, s.line) if s else None,
            self.tensor.name if self.tensor else None,
        )

    def summary(self) -> str:
        """The greppable one-line summary: ``<kind> <file>:<line> in <func> (<op>)``, at
        the user's own line (the call into library code that made the write)."""
        site = self.write.user_site if self.write else None
        if site is None and self.saved is not None:
            site = self.saved.user_site
        if site is None and self.origin:
            site = self.origin[0].site
        where = f"{site.file}:{site.line} in {site.function}" if site else "<unknown>"
        op = self.write.op if self.write else (self.saved.op if self.saved else "?")
        return f"{self.kind} {where} ({op})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the report around it: `gradguard._findings.schema`)."""
        return {
            "kind": self.kind,
            "code": self.code,
            "title": self.title,
            "mutation": ({"op": self.write.op, "via": self.write.via, "alias": self.write.alias,
                          **_site(self.write.stack)} if self.write else None),
            "saved": ({"op": self.saved.op, "node": self.saved.node, **_site(self.saved.stack),
                       **({"assigned": _frame_dict(self.saved.assigned)}
                          if self.saved.assigned else {})}
                      if self.saved else None),
            "tensor": ({**asdict(self.tensor), "shape": list(self.tensor.shape)}
                       if self.tensor else None),
            "overlap": self.overlap,
            "aliasing": self.aliasing,
            "fix": self.fix,
            "detail": self.detail,
            "repaired": self.repaired,
            "writes": [{"op": w.op, "note": w.note, **_site(w.stack)} for w in self.writes],
            **({"origin": [{"what": o.what,
                            "site": _frame_dict(o.site) if o.site else None}
                           for o in self.origin]} if self.origin else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Conflict":
        """The inverse of `to_dict` (the picture, not part of the JSON, is left out)."""
        m, s, t = d.get("mutation"), d.get("saved"), d.get("tensor")
        return cls(
            kind=str(d.get("kind") or ""),
            write=(Mutation(op=m.get("op") or "?", stack=_stack(m), via=m.get("via"),
                            alias=m.get("alias")) if m else None),
            saved=(SavedBy(op=s.get("op"), node=s.get("node"), stack=_stack(s),
                           assigned=(_frames([s["assigned"]])[0] if s.get("assigned")
                                     else None)) if s else None),
            tensor=(_tensor_info(t) if t else None),
            overlap=d.get("overlap"),
            aliasing=dict(d.get("aliasing") or {}),
            fix=d.get("fix") or "",
            detail=d.get("detail") or "",
            repaired=bool(d.get("repaired")),
            writes=[Mutation(op=w.get("op") or "?", stack=_stack(w), note=w.get("note"))
                    for w in d.get("writes") or ()],
            origin=[Origin(what=str(o.get("what") or ""),
                           site=_frames([o["site"]])[0] if o.get("site") else None)
                    for o in d.get("origin") or ()],
        )


def _site(stack: list[Frame]) -> dict[str, Any]:
    top = stack[0] if stack else None
    return {
        "file": top.file if top else None,
        "line": top.line if top else None,
        "function": top.function if top else None,
        "stack": [_frame_dict(f) for f in stack],
    }


def _tensor_info(t: dict[str, Any]) -> TensorInfo:
    """A report's tensor block; a hand-written or older one may leave fields out."""
    known = {k: t[k] for k in ("version_saved", "version_now", "name", "produced_by") if k in t}
    return TensorInfo(dtype=str(t.get("dtype") or ""), shape=tuple(t.get("shape") or ()),
                      device=str(t.get("device") or ""),
                      is_parameter=bool(t.get("is_parameter")), **known)


def _frame_dict(f: Frame) -> dict[str, Any]:
    out = asdict(f)
    if not f.library:  # only library frames say so
        del out["library"]
    return out


def _frames(items: Any) -> list[Frame]:
    out = []
    for f in items or ():
        out.append(Frame(str(f.get("file") or ""), int(f.get("line") or 0),
                         str(f.get("function") or ""), str(f.get("source") or ""),
                         library=bool(f.get("library"))))
    return out


def _stack(block: dict[str, Any]) -> list[Frame]:
    """The stack of a site; an old or hand-written report may give only file/line."""
    stack = _frames(block.get("stack"))
    if not stack and block.get("file") and block.get("line"):
        stack = [Frame(str(block["file"]), int(block["line"]), str(block.get("function") or ""))]
    return stack


for _public in (Frame, Mutation, SavedBy, Origin, TensorInfo, Conflict):
    _public.__module__ = "gradguard"
