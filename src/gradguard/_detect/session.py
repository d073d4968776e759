"""`gradguard.detect()`: the runtime sanitizer.

How it works, in one paragraph: a saved-tensor pack hook records every tensor autograd
saves (its version and where it was saved) in a registry indexed by storage; patched
in-place entry points record every write that lands on a registered storage (op, where,
byte range); the unpack hook, which runs exactly when backward needs the tensor,
confirms a conflict if the tensor's version moved or a recorded write overlapped its
bytes, and names that write. Installing saved-tensor hooks turns off PyTorch's own
version check, so the unpack hook always re-checks versions itself: a program stock
PyTorch rejects is still rejected, with a better message.
"""
from __future__ import annotations

import functools
import os
import re
import threading
import warnings
import weakref
import zlib
from typing import Any, Callable, Literal, Optional, TypeVar, overload

import torch
import torch.utils.checkpoint

from gradguard._core import fixes, sites
from gradguard._core.names import module_path
from gradguard._core.registry import SavedRecord, byte_range
from gradguard._core.runtime import new_record, runtime
from gradguard._findings.model import Conflict, Mutation, SavedBy, TensorInfo
from gradguard._explain.picture import capture as capture_graph
from gradguard.errors import InplaceConflictError

OnConflict = Literal["raise", "warn", "record"]
When = Literal["backward", "write"]
F = TypeVar("F", bound=Callable[..., Any])

_CHECKPOINT_HOOKS = {"_checkpoint_hook", "_recomputation_hook"}
_OPTIM_PATH = os.path.join("torch", "optim", "")
_CHECKPOINT_PATH = os.path.join("torch", "utils", "checkpoint.py")
_KIND_OF_RECORD = {
    "saved": "saved-tensor-mutated",
    "ctx": "ctx-attribute-mutated",
    "checkpoint": "checkpoint-input-mutated",
}


class InplaceConflictWarning(UserWarning):
    """Issued for each conflict in ``on_conflict="warn"`` mode."""


class _GradguardHooks(torch.autograd.graph.saved_tensors_hooks):
    """Our saved-tensor hooks; a subclass so foreign hooks can be told apart."""


def _forward_op(node_name: Optional[str]) -> Optional[str]:
    """``SigmoidBackward0`` -> ``sigmoid``; ``MyFnBackward`` (custom Function) -> ``MyFn``."""
    if not node_name:
        return None
    m = re.match(r"^(.*?)Backward(\d+)?$", node_name)
    if not m:
        return node_name
    base = m.group(1)
    if m.group(2) is None:  # custom autograd.Function: keep the class name
        return base
    return re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()


def _fingerprint(t: torch.Tensor) -> int:
    """CRC32 of the tensor's bytes, to catch writes that bypass PyTorch (NumPy views)."""
    with torch.no_grad():
        flat = t.detach()
        if flat.device.type != "cpu":
            flat = flat.cpu()
        flat = flat.contiguous().reshape(-1)
        if flat.dtype is torch.bool:
            flat = flat.to(torch.uint8)
        return zlib.crc32(flat.view(torch.uint8).numpy())


class DetectSession:
    """A running sanitizer: use as a context manager or a decorator.

    Attributes:
        conflicts: the confirmed `Conflict`s, deduplicated by write site and save site.
        coverage_gaps: places gradguard could not check (foreign saved-tensor hooks).
    """

    def __init__(self, on_conflict: OnConflict = "raise", when: When = "backward",
                 checksum: bool = False, max_stack: int = sites.MAX_STACK) -> None:
        if on_conflict not in ("raise", "warn", "record"):
            raise ValueError(f"on_conflict must be 'raise', 'warn' or 'record', not {on_conflict!r}")
        if when not in ("backward", "write"):
            raise ValueError(f"when must be 'backward' or 'write', not {when!r}")
        if not isinstance(max_stack, int) or max_stack < 1:
            raise ValueError(f"max_stack must be a positive int, not {max_stack!r}")
        self.on_conflict = on_conflict
        self.eager = when == "write"
        self.checksum = checksum
        self.max_stack = max_stack
        self._save_stack = min(max_stack, sites.SAVE_STACK)
        self.conflicts: list[Conflict] = []
        self.coverage_gaps: list[str] = []
        self._seen: set = set()
        self._lock = threading.Lock()
        self._hooks: list[_GradguardHooks] = []
        self._parent: Optional[DetectSession] = None
        # The protect session that repairs what this session saves (itself, for protect()).
        self.protector: Any = None
        self._repairs_seen: set = set()
        # Called with each conflict newly recorded here (after deduplication) that does not
        # stop the program (`gradguard run` streams its SUMMARY line).
        self.listeners: list[Callable[[Conflict], Any]] = []

    repairs = False  # copy-on-write; True for `gradguard.protect()` sessions

    # -- context manager / decorator ----------------------------------------------
    def __enter__(self) -> "DetectSession":
        outer = runtime.innermost()
        if outer is not None and outer is not self:
            self._parent = outer
        elif outer is None:
            self._note_existing_hooks()
        parent = self._parent
        self.protector = self if self.repairs else (parent.protector if parent else None)
        runtime.acquire(self)
        hooks = _GradguardHooks(self._pack, self._unpack)
        hooks.__enter__()
        self._hooks.append(hooks)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        hooks = self._hooks.pop()
        hooks.__exit__(*exc_info)
        runtime.release(self)

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        guarded.gradguard_session = self  # type: ignore[attr-defined]
        return guarded  # type: ignore[return-value]

    # -- reporting ------------------------------------------------------------------
    def report(self, color: bool = False) -> str:
        """The text report of every conflict found so far ('' when none)."""
        from gradguard._explain.text import render_text

        return render_text(self.conflicts, self.coverage_gaps, color=color)

    def to_dict(self) -> dict[str, Any]:
        from gradguard._explain.text import to_dict

        return to_dict(self.conflicts, self.coverage_gaps)

    def trailer_lines(self) -> list[str]:
        """Lines `gradguard run` prints after the conflicts (protect: what was copied)."""
        return []

    def draw(self, path: Any, engine: str = "auto") -> Any:
        """Write an SVG of the autograd graph around each conflict to ``path`` (see
        `gradguard._explain.picture.draw`: Graphviz ``dot`` when present, else a built-in layout)."""
        from gradguard._explain.picture import draw

        return draw(self.conflicts, path, engine=engine)

    def __repr__(self) -> str:
        return (f"<gradguard.DetectSession on_conflict={self.on_conflict!r} "
                f"conflicts={len(self.conflicts)}>")

    # -- saved-tensor hooks ------------------------------------------------------------
    def _pack(self, t: torch.Tensor) -> Any:
        stack, entry = sites.capture(2, self._save_stack)  # entry: torch code that saved
        # Leaves are held as themselves (as PyTorch does); other tensors detached, since an
        # output saved by its own node would otherwise form an uncollectable cycle.
        try:
            version = t._version
        except RuntimeError:  # inference tensors have no version counter: nothing to check
            return t
        # The storage key is computed lazily, if a write ever needs to look it up.
        grad_fn = t.grad_fn  # None exactly for leaves
        rec = SavedRecord(t if grad_fn is None else t.detach(), version, None, self, stack)
        rec.inner = entry
        rec.producer = type(grad_fn)
        rec.fresh = grad_fn is not None and not t._is_view()
        rec.protector = self.protector
        runtime.registry.add(rec)
        if self.checksum:
            rec.checksum = _fingerprint(t)
        return rec

    def _unpack(self, rec: Any) -> torch.Tensor:
        if not isinstance(rec, SavedRecord):
            return rec
        t = rec.tensor
        if t._version != rec.version or rec.writes is not None or rec.checksum is not None:
            return self._check(rec, t)
        return t

    def _check(self, rec: SavedRecord, t: torch.Tensor) -> torch.Tensor:
        if rec.protector is not None and not rec.tainted and t._version == rec.expected:
            # Every change since the save was a write we intercepted, and the ones that
            # overlapped the saved bytes were preceded by a copy: backward gets those bytes.
            if rec.preserved is not None:
                self._repaired(rec)
                return rec.preserved
            if not any(hit for _, hit in rec.writes or ()):
                return t  # only writes elsewhere in the storage: the saved bytes are intact
        moved = t._version != rec.version
        hits = [w for w, hit in rec.writes or () if hit]
        if moved or hits:
            self.confirm(rec)
        elif rec.checksum is not None and _fingerprint(t) != rec.checksum:
            self.confirm(rec, outside=True)
        return t

    def _repaired(self, rec: SavedRecord) -> None:
        """Report a conflict copy-on-write repaired: once per write site and save site."""
        hits = [w for w, hit in rec.writes or () if hit]
        key = (rec.stack, hits[0].stack if hits else None, rec.kind)
        with self._lock:
            if key in self._repairs_seen:
                return
            self._repairs_seen.add(key)
        self.confirm(rec, repaired=True)

    # -- confirming and delivering conflicts ---------------------------------------------
    def confirm(self, rec: SavedRecord, *, pending: Any = None, outside: bool = False,
                node_name: Optional[str] = None, repaired: bool = False) -> None:
        """Build the conflict for ``rec``, deliver it, and raise/warn as configured."""
        t = rec.tensor
        moved = t._version != rec.version
        node = torch._C._current_autograd_node() if pending is None else None
        if node_name is None and pending is None:
            node_name = type(node).__name__ if node is not None else None
        writes = [pending] if pending is not None else [w for w, _ in rec.writes or ()]
        hits = [w for w, hit in rec.writes or () if hit] if pending is None else [pending]
        write = hits[-1] if hits else (writes[-1] if writes else None)
        if rec.kind == "saved" and sites.called_through(rec.inner, _CHECKPOINT_PATH):
            # Non-reentrant checkpoint saves its inputs to recompute from them: a write
            # through `.data` there silently changes the recomputed forward.
            rec.kind, rec.label = "checkpoint", "torch.utils.checkpoint"
        kind = "saved-tensor-mutated-outside-pytorch" if outside else _KIND_OF_RECORD[rec.kind]

        saver_op = rec.label or _forward_op(node_name)
        saved = SavedBy(op=saver_op, node=node_name, stack=sites.resolve(rec.stack))
        name, is_param = (None, False) if rec.fresh else module_path(t)
        tensor = TensorInfo(
            dtype=str(t.dtype), shape=tuple(t.shape), device=str(t.device),
            version_saved=rec.version, version_now=t._version, name=name,
            produced_by=(rec.producer.__name__
                         if rec.producer is not None and rec.producer is not type(None) else None),
            is_parameter=is_param,
        )
        mutation = None
        aliasing: dict[str, Any] = {}
        s_start, s_end = byte_range(t)
        if write is not None:
            # Saved bytes changed but the version did not: the write went through an
            # alias with its own version counter (`.data`), or a kernel that bumps none.
            silent = bool(hits) and not moved and pending is None
            alias = ".data" if silent and ".data" in sites.source_of(write.stack) else None
            mutation = Mutation(
                op=write.op, stack=sites.resolve(write.stack),
                via="torch.optim" if sites.called_through(write.entry, _OPTIM_PATH) else None,
                alias=alias,
            )
            aliasing = {
                "same_storage": True,
                "written_bytes": [write.start, write.end],
                "saved_bytes": [s_start, s_end],
                "whole_tensor_write": write.whole,
            }
        else:
            aliasing = {"same_storage": None, "saved_bytes": [s_start, s_end]}
        overlap = None if outside or write is None else bool(hits)

        backward_src = None
        if pending is None:
            frame = sites.innermost_user_frame(2)
            if frame is not None:
                backward_src = sites.resolve(((frame.f_code, frame.f_lasti),))[0].source
        if outside:
            fix = ("find the code that writes this tensor's memory outside PyTorch (a NumPy "
                   "view from `.numpy()`, a DLPack or buffer alias) and give it a copy "
                   "(`t.detach().numpy().copy()`, or clone the tensor first)")
        elif kind == "checkpoint-input-mutated":
            fix = ("do not modify inputs of a checkpointed region before its backward: "
                   "clone the input before writing, or write it after `backward()`")
        elif mutation is not None:
            fix = fixes.for_write(
                mutation.op, mutation.site, via_optimizer=mutation.via == "torch.optim",
                alias=mutation.alias, backward_source=backward_src, saver_op=saver_op,
            )
            if kind == "ctx-attribute-mutated":
                fix += ("; and in the Function, keep tensors with `ctx.save_for_backward(...)` "
                        "so PyTorch checks them")
        else:
            fix = ("the write was not intercepted (it ran inside C++ code or a compiled "
                   "region, or before gradguard started); run with "
                   "`when=\"write\"` or bisect the writes to this tensor after its save site")

        what = f"`{name}`" if name else tensor.short()
        who = node_name or (rec.label or "backward")
        if kind == "checkpoint-input-mutated":
            detail = (f"{what} is an input of a checkpointed region; it was modified after the "
                      "region's forward, so recomputation in backward silently used the new "
                      "values")
        elif kind == "ctx-attribute-mutated":
            detail = (f"{rec.label} keeps {what} on ctx (not via save_for_backward, so PyTorch "
                      "does not check it); it was modified before the backward ran")
        elif outside:
            detail = (f"{who} needs {what}, saved at version {rec.version}; its bytes changed "
                      "without any PyTorch write (written outside PyTorch)")
        elif repaired:
            detail = (f"{who} needs {what}, saved at version {rec.version}; a write overwrote "
                      "its bytes, and gradguard.protect gave backward the copy it kept just "
                      "before that write, so the gradient is as the program meant it")
        elif pending is not None:
            detail = (f"this write would overwrite {what}, saved for backward by "
                      f"{saver_op or 'an earlier op'}; stopped before the write (when='write')")
        else:
            detail = f"{who} needs {what}, saved at version {rec.version}; "
            if moved:
                detail += f"it is now at version {t._version}"
            else:
                why = ("the write went through `.data`, which has its own version counter"
                       if mutation is not None and mutation.alias == ".data" else
                       "the write went through an alias with its own version counter, or a "
                       "kernel that bumps none")
                detail += (f"its version did not move ({why}), so PyTorch would not notice "
                           "and the gradient is silently wrong")
        conflict = Conflict(kind=kind, write=mutation, saved=saved, tensor=tensor,
                            overlap=overlap, aliasing=aliasing, fix=fix, detail=detail,
                            repaired=repaired)
        # The picture's neighbourhood, as names only (no tensors, no nodes kept).
        conflict.graph = capture_graph(node, rec, conflict)
        # A moved version is what stock PyTorch rejects (it checks everything saved, but
        # not ctx attributes): reject it in every mode.
        fatal = moved and pending is None and rec.kind != "ctx" and not repaired
        self._deliver(conflict, fatal=fatal, stock_line=self._stock_line(t, rec, node_name)
                      if fatal else None)

    @staticmethod
    def _stock_line(t: torch.Tensor, rec: SavedRecord, node_name: Optional[str]) -> str:
        return (
            "one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: [{t.type()} {list(t.shape)}], which is saved by "
            f"{node_name or 'a backward node'}, is at version {t._version}; expected version "
            f"{rec.version} instead."
        )

    def _record(self, conflict: Conflict) -> list["DetectSession"]:
        """Add to this session and every enclosing one, once per write and save site;
        return the sessions it was new to."""
        key = conflict.dedup_key()
        session: Optional[DetectSession] = self
        new = []
        while session is not None:
            with session._lock:
                if key not in session._seen:
                    session._seen.add(key)
                    session.conflicts.append(conflict)
                    new.append(session)
            session = session._parent
        return new

    def _deliver(self, conflict: Conflict, *, fatal: bool = False,
                 stock_line: Optional[str] = None) -> None:
        new_to = self._record(conflict)
        if fatal or (self.on_conflict == "raise" and not conflict.repaired):
            from gradguard._explain.text import render_text

            message = render_text([conflict], ())
            if stock_line:
                message = f"{stock_line}\n\n{message}"
            raise InplaceConflictError(message, [conflict])
        if self.on_conflict == "warn":
            message = f"gradguard: {conflict.summary()}: {conflict.detail}. Fix: {conflict.fix}"
            site = (conflict.write.site if conflict.write else None) or (
                conflict.saved.site if conflict.saved else None)
            if site is None:
                warnings.warn(message, InplaceConflictWarning, stacklevel=2)
            else:  # attribute the warning to the user's line, not to gradguard's
                warnings.warn_explicit(message, InplaceConflictWarning, site.file, site.line)
        for listener in [f for session in new_to for f in session.listeners]:
            listener(conflict)

    # -- PyTorch's own in-place errors, explained ----------------------------------------
    def explain_write_error(self, kind: str, op: str, exc: BaseException, args: tuple) -> None:
        stack, _ = sites.capture(3, self.max_stack)
        mutation = Mutation(op=op, stack=sites.resolve(stack))
        t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        tensor = None
        if t is not None:
            name, is_param = module_path(t)
            tensor = TensorInfo(dtype=str(t.dtype), shape=tuple(t.shape), device=str(t.device),
                                name=name, is_parameter=is_param)
        if kind in ("leaf-inplace", "leaf-view-inplace"):
            specific = fixes.for_write(op, mutation.site, via_optimizer=False, alias=None,
                                       backward_source=None, saver_op=None)
            fix = f"{specific}; {fixes.LEAF_FIX}"
        elif kind == "multi-output-view-inplace":
            fix = fixes.MULTI_VIEW_FIX
        else:
            fix = fixes.INFERENCE_FIX
        conflict = Conflict(kind=kind, write=mutation, tensor=tensor, fix=fix,
                            detail=str(exc).splitlines()[0])
        self._record(conflict)
        from gradguard._explain.text import render_text

        if hasattr(exc, "add_note"):
            exc.add_note("\n" + render_text([conflict], ()))

    # -- coverage beyond save_for_backward --------------------------------------------------
    def track_ctx(self, cls: type, out: Any) -> None:
        """Register tensors a custom autograd.Function stored as ctx attributes."""
        outs = out if isinstance(out, (tuple, list)) else (out,)
        node = None
        for o in outs:
            if isinstance(o, torch.Tensor) and o.grad_fn is not None:
                node = o.grad_fn
                break
        if node is None or not hasattr(node, "__dict__"):
            return
        found = []  # (attribute, index in a tuple/list attribute or None, tensor)
        for attr, value in list(vars(node).items()):
            if isinstance(value, torch.Tensor):
                found.append((attr, None, value))
            elif isinstance(value, (tuple, list)):
                found.extend((attr, i, v) for i, v in enumerate(value)
                             if isinstance(v, torch.Tensor))
        if not found:
            return
        tracked = [(new_record(v, self, "ctx", f"{cls.__name__}.forward (ctx.{attr})", skip=4),
                    attr, i) for attr, i, v in found if not v.is_inference()]
        node.__dict__["_gradguard_ctx_records"] = [rec for rec, _, _ in tracked]
        node_name = type(node).__name__
        node_ref = weakref.ref(node)  # the hook lives on the node: no cycle through C++

        def check_ctx(grad_outputs: Any) -> None:
            for rec, attr, i in tracked:
                t = rec.tensor
                if (rec.preserved is not None and not rec.tainted
                        and t._version == rec.expected):
                    _put_back(node_ref(), attr, i, rec.preserved)  # protect(): the kept copy
                    rec.owner._repaired(rec)
                elif t._version != rec.version or any(hit for _, hit in rec.writes or ()):
                    rec.owner.confirm(rec, node_name=node_name)

        node.register_prehook(check_ctx)

    def note_foreign_hooks(self, hooks: Any) -> None:
        if isinstance(hooks, _GradguardHooks) or type(hooks).__name__ in _CHECKPOINT_HOOKS:
            return
        frame = sites.innermost_user_frame(3)
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "<unknown>"
        self._gap(f"saved tensors packed under {type(hooks).__name__} (entered at {where}) are "
                  "not checked: those hooks replace gradguard's while active"
                  + ("; save_on_cpu copies CUDA tensors at save time, but keeps CPU tensors "
                     "as they are, unchecked (PyTorch skips its version check under hooks)"
                     if type(hooks).__name__ == "save_on_cpu" else ""))

    def _note_existing_hooks(self) -> None:
        top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
        if top_hooks is not None and top_hooks(False) is not None:
            self._gap("detect() was entered inside other saved-tensor hooks (such as "
                      "save_on_cpu); gradguard's hooks replace them inside detect()")

    def _gap(self, text: str) -> None:
        with self._lock:
            if text not in self.coverage_gaps:
                self.coverage_gaps.append(text)


def _put_back(node: Any, attr: str, index: Optional[int], value: torch.Tensor) -> None:
    """Replace a ctx attribute (or one item of a tuple/list attribute) before backward."""
    if index is None:
        setattr(node, attr, value)
        return
    items = list(getattr(node, attr))
    items[index] = value
    old = getattr(node, attr)
    setattr(node, attr, type(old)(items) if isinstance(old, tuple) else items)


@overload
def detect(func: F) -> F: ...
@overload
def detect(func: None = None, *, on_conflict: OnConflict = "raise", when: When = "backward",
           checksum: bool = False, max_stack: int = sites.MAX_STACK) -> DetectSession: ...


def detect(func: Optional[Callable] = None, *, on_conflict: OnConflict = "raise",
           when: When = "backward", checksum: bool = False,
           max_stack: int = sites.MAX_STACK) -> Any:
    """Run code under the in-place write sanitizer.

    ``on_conflict``: "raise" (raise `InplaceConflictError` where backward needs the damaged
    tensor), "warn", or "record" (collect in ``session.conflicts``). A write whose tensor
    version moved always raises, as stock PyTorch would; "warn"/"record" only continue
    past the silent cases (``.data`` writes, ctx attributes, checkpoint inputs).
    ``when="write"`` stops at the write itself, before data is lost (for a debugger); it
    can also flag writes into graphs that are never backwarded.
    ``checksum=True`` fingerprints saved tensors to catch writes that bypass PyTorch.
    """
    session = DetectSession(on_conflict=on_conflict, when=when, checksum=checksum,
                            max_stack=max_stack)
    if func is not None:
        return session(func)
    return session
