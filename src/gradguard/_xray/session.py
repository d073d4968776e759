"""`gradguard.xray()`: what backward keeps, for one training step.

An `XraySession` is a saving session (its pack hook sees every tensor autograd saves) that
also hears of every intercepted write (the core's `Runtime.watch_all`) and of every torch
call (a `TorchFunctionMode`, active only while it records). From these it records:

* every saved tensor: shape, dtype, bytes, the forward line that saved it, and whether it
  is a parameter; at the first ``backward()`` the graph is walked from its roots, and each
  node's saved attributes are read once (each read goes through our unpack hook, which is
  how a saved tensor is matched to the node that saved it, and as its input or output);
* the saved bytes alive after each save and each release (a node's saved tensors are
  released when backward frees it), hence the peak over the step;
* each in-place write: *safe* when the bytes it wrote overlapped no tensor alive in any
  graph's saved set (gradguard's own records included), else what it overwrote;
* out-of-place ops that could have been in place: see `_Candidates`.

"One training step" is the ``with gradguard.xray():`` block; with ``until="next-forward"``
(what ``gradguard xray script.py`` uses) recording stops at the first save after the first
``backward()`` has finished -- the next forward -- so the optimizer step and ``zero_grad``
that follow backward are part of the step.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode

from gradguard._core import names, sites
from gradguard._core.registry import byte_range, storage_key
from gradguard._core.runtime import runtime
from gradguard._core.session import Session
from gradguard.errors import UsageError

__all__ = ["XraySession", "xray"]

_UNTILS = ("exit", "next-forward")
# In-place variants that change metadata (not an elementwise rewrite of the same bytes).
_NOT_CANDIDATES = frozenset({
    "t", "transpose", "squeeze", "unsqueeze", "swapaxes", "swapdims", "as_strided",
    "resize", "resize_as", "set", "detach", "requires_grad", "share_memory", "copy",
    "random", "uniform", "normal", "fill", "zero", "index_put", "put", "map", "apply",
})


def _describe_dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class _Packed:
    """What autograd holds for one saved tensor while xray records (autograd owns it)."""

    __slots__ = ("tensor", "index", "__weakref__")

    def __init__(self, tensor: torch.Tensor, index: int) -> None:
        self.tensor = tensor
        self.index = index


class _Mode(TorchFunctionMode):
    def __init__(self, session: "XraySession") -> None:
        super().__init__()
        self.session = session

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        s = self.session
        if not s.recording:
            return func(*args, **kwargs)
        # A write reached through our own write wrapper (the wrapper calls the C method,
        # which dispatches here with the public, wrapped, function): call what it wraps,
        # so the write is intercepted once.
        inner = getattr(func, "__wrapped__", None)
        if inner is not None and getattr(getattr(func, "__code__", None), "co_name",
                                         None) == "gradguard_write":
            func = inner
        if func is torch.Tensor.backward or func is torch.autograd.backward:
            return s._backward(func, args, kwargs)
        return s._op(func, args, kwargs)


class XraySession(Session):
    """What `gradguard.xray()` returns; ``.report()`` (text), ``.to_dict()`` (JSON),
    ``.write_html(path)``, after the block."""

    max_stack = sites.SAVE_STACK

    def __init__(self, until: str = "exit", top: int = 10) -> None:
        super().__init__()
        if until not in _UNTILS:
            raise UsageError(f"gradguard.xray(until=...) must be one of "
                             f"{', '.join(map(repr, _UNTILS))}, not {until!r}")
        self.until = until
        self.top = top
        self.recording = False
        self.saved: list[dict[str, Any]] = []
        self.nodes: list[dict[str, Any]] = []
        self.writes: list[dict[str, Any]] = []
        self.timeline: list[tuple[int, str, int]] = []  # (event, phase, live saved bytes)
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_at: Optional[int] = None  # index in `saved` of the save that reached it
        self.backward_at: Optional[int] = None  # timeline event where backward began
        self._lock = threading.RLock()
        self._live: dict[tuple[int, int, int], list[int]] = {}  # (key,start,end)->[count,bytes]
        # storage key -> {(start, end): indices in `saved` of the live records there}
        self._by_storage: dict[int, dict[tuple[int, int], list[int]]] = {}
        # records of a graph the first backward went through without retain_graph: that
        # graph cannot be run again, so writing them harms nothing
        self._spent: set[int] = set()
        self._collecting: Optional[list[int]] = None
        self._backward_done = False
        self._mode: Optional[_Mode] = None
        self._candidates = _Candidates(self)
        self._ended = False
        # until="next-forward": nothing counts before the first save (model building,
        # data loading); "exit": the whole block does.
        self._started = until == "exit"

    # -- lifecycle ---------------------------------------------------------------------
    def on_enter(self) -> None:
        self.recording = True
        runtime.watch_all(self)
        self._mode = _Mode(self)
        self._mode.__enter__()

    def on_exit(self) -> None:
        self._stop()
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        runtime.unwatch_all(self)
        self._ended = True

    def _stop(self) -> None:
        if self.recording:
            self.recording = False
            self._candidates.finish()

    # -- saves -------------------------------------------------------------------------
    def pack(self, t: torch.Tensor) -> Any:
        if self.recording and self._backward_done and self.until == "next-forward":
            self._stop()  # the next forward: the step is over
        held = t if t.grad_fn is None else t.detach()
        if not self.recording:
            return held
        self._started = True
        try:
            return self._pack(t, held)
        except Exception as exc:  # noqa: BLE001 - our failure must not change the program
            runtime.internal_error("xray's record of a saved tensor", exc)
            return held

    def _pack(self, t: torch.Tensor, held: torch.Tensor) -> Any:
        stack, _ = sites.capture(3, self.max_stack)
        key = storage_key(t)
        start, end = byte_range(t) if key is not None else (0, t.numel() * t.element_size())
        nbytes = end - start
        owner = None
        is_param = False
        # A parameter, or a view of one (Linear saves ``weight.t()``): found by storage,
        # named when the report is made (the root after a variable of the caller's then).
        # An op's fresh output cannot be one, so most saves skip the lookup.
        if (t.grad_fn is None and t.requires_grad) or t._is_view():
            found = names.index.owner(t)
            if found is not None and found[2]:
                owner, is_param = (weakref.ref(found[0]), found[1]), True
            is_param = is_param or isinstance(t, torch.nn.Parameter)
        index = len(self.saved)
        self.saved.append({
            "index": index, "shape": list(t.shape), "dtype": _describe_dtype(t.dtype),
            "bytes": nbytes, "owner": owner,
            "role": "parameter" if is_param else None, "node": None,
            "grad_fn": id(t.grad_fn) if t.grad_fn is not None else None,
            "stack": stack, "event": len(self.timeline),
        })
        packed = _Packed(held, index)
        if key is not None:
            with self._lock:
                ranges = self._by_storage.setdefault(key, {})
                ranges.setdefault((start, end), []).append(index)
                if not is_param:
                    live = self._live.setdefault((key, start, end), [0, nbytes])
                    live[0] += 1
                    if live[0] == 1:
                        self.live_bytes += nbytes
                        if self.live_bytes > self.peak_bytes:
                            self.peak_bytes, self.peak_at = self.live_bytes, index
                self.timeline.append((len(self.timeline), "forward" if self.backward_at is None
                                      else "backward", self.live_bytes))
            weakref.finalize(packed, self._released, key, start, end, is_param, index)
        return packed

    def _released(self, key: int, start: int, end: int, is_param: bool, index: int) -> None:
        if self._ended:
            return
        with self._lock:
            ranges = self._by_storage.get(key)
            if ranges is not None:
                slot = ranges.get((start, end))
                if slot is not None and index in slot:
                    slot.remove(index)
                    if not slot:
                        del ranges[(start, end)]
                        if not ranges:
                            del self._by_storage[key]
            if not is_param:
                live = self._live.get((key, start, end))
                if live is not None:
                    live[0] -= 1
                    if live[0] <= 0:
                        del self._live[(key, start, end)]
                        self.live_bytes -= live[1]
            if self.recording or self._backward_done:
                self.timeline.append((len(self.timeline), "backward"
                                      if self.backward_at is not None else "forward",
                                      self.live_bytes))

    def unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, _Packed):
            collecting = self._collecting
            if collecting is not None:
                collecting.append(packed.index)
            return packed.tensor
        return packed

    # -- backward: the graph walk ----------------------------------------------------------
    def _backward(self, func: Any, args: tuple, kwargs: dict) -> Any:
        if not self._backward_done and self.backward_at is None:
            roots = args[0] if args else kwargs.get("tensors", kwargs.get("self"))
            retain = kwargs.get("retain_graph")
            if retain is None and len(args) > 2:  # (self|tensors, gradient, retain_graph)
                retain = args[2]
            retain = bool(retain) or bool(kwargs.get("create_graph"))
            walked: list[int] = []
            try:
                self._walk(roots, walked)
            except Exception as exc:  # noqa: BLE001
                runtime.internal_error("xray's walk of the graph", exc)
            self._candidates.finish()
            self.backward_at = len(self.timeline)
            try:
                return func(*args, **kwargs)
            finally:
                self._backward_done = True
                if not retain:  # that graph can never run again: its records are spent
                    self._spent.update(walked)
        return func(*args, **kwargs)

    def _walk(self, roots: Any, walked: list[int]) -> None:
        if isinstance(roots, torch.Tensor):
            roots = [roots]
        frontier = [r.grad_fn for r in roots if isinstance(r, torch.Tensor) and r.grad_fn is not None]
        seen: set[int] = set()
        order = []
        while frontier:
            node = frontier.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            order.append(node)
            for nxt, _ in getattr(node, "next_functions", ()):
                if nxt is not None:
                    frontier.append(nxt)
        for node in order:
            found: list[int] = []
            attrs = [a for a in dir(node) if a.startswith("_saved_")]
            if hasattr(type(node), "saved_tensors") or "saved_tensors" in dir(node):
                attrs.append("saved_tensors")
            for attr in attrs:
                collect: list[int] = []
                self._collecting = collect
                try:
                    getattr(node, attr)
                except Exception:  # noqa: BLE001, S110 - freed or not a tensor
                    pass
                finally:
                    self._collecting = None
                found.extend(i for i in collect if i not in found)
            entry = {"index": len(self.nodes), "name": node.name(), "saved": found}
            walked.extend(found)
            self.nodes.append(entry)
            for i in found:
                rec = self.saved[i]
                if rec["node"] is None:
                    rec["node"] = entry["index"]
                    if rec["role"] is None:
                        rec["role"] = "output" if rec["grad_fn"] == id(node) else "input"

    # -- torch calls (candidates) --------------------------------------------------------
    def _op(self, func: Any, args: tuple, kwargs: dict) -> Any:
        cands = self._candidates
        if cands.pending:
            cands.uses(args, kwargs)
        out = func(*args, **kwargs)
        if not self._started:
            return out
        try:
            cands.consider(func, args, out)
        except Exception as exc:  # noqa: BLE001
            runtime.internal_error("xray's look at an op", exc)
        return out

    def saved_over(self, key: Optional[int], start: int, end: int) -> Optional[int]:
        """Index of a live saved record of ours overlapping [start, end) of storage
        ``key``, -1 for another session's, else None."""
        if key is None:
            return None
        with self._lock:
            for (s, e), indices in self._by_storage.get(key, {}).items():
                if s < end and start < e:
                    for index in indices:
                        if index not in self._spent:
                            return index
        if runtime.registry.maybe_live():
            for rec in runtime.registry.on_storage(key):
                s, e = byte_range(rec.tensor)
                if s < end and start < e:
                    return -1
        return None

    # -- writes ------------------------------------------------------------------------
    def before_watched_write(self, op: str, target: Any, whole: bool, payloads: Any) -> None:
        if not self.recording or self._ended or not self._started:
            return
        key: Optional[int]
        if isinstance(target, torch.UntypedStorage):
            key, start, end = int(target._cdata), 0, int(target.nbytes())
        else:
            key = storage_key(target)
            start, end = byte_range(target) if key is not None else (0, 0)
        hit = self.saved_over(key, start, end)
        stack, _ = sites.capture(3, self.max_stack)
        self.writes.append({"op": op, "stack": stack, "bytes": end - start,
                            "safe": hit is None, "overwrote": hit,
                            "phase": "forward" if self.backward_at is None else
                            ("after backward" if self._backward_done else "backward")})

    # -- results -----------------------------------------------------------------------
    def parameter_name(self, rec: dict[str, Any]) -> Optional[str]:
        owner = rec.get("owner")
        if owner is None:
            return None
        module = owner[0]()
        if module is None:
            return owner[1]
        return ".".join([*names.index.path_to(module), owner[1]])

    def to_dict(self) -> dict[str, Any]:
        from gradguard._xray import report

        return report.to_dict(self)

    def report(self) -> str:
        from gradguard._xray import report

        return report.render_text(self.to_dict(), top=self.top)

    def write_html(self, path: Any) -> Any:
        from gradguard._xray import report

        return report.write_html(self.to_dict(), path)


class _Candidates:
    """Out-of-place ops that could have been in place, decided from torch calls seen by
    the session's `TorchFunctionMode`:

    an op ``out = f(x, ...)`` with an in-place variant ``x.f_(...)`` whose output has
    ``x``'s shape and dtype, where ``x`` is not a leaf that requires grad, not a view (a
    write would reach its base) and, right after the op, shares no storage with any live
    saved tensor (so neither this op nor an earlier one saved it); it becomes a
    candidate, and stops being one as soon as any later torch call takes ``x`` as an
    argument. Those still standing when the forward ends (the first ``backward()``, or
    the end of recording) are reported; those whose input was already freed by then are
    the sure ones (``freed``), the others' input outlived the forward and may be read
    later (optimizer state read next step), so they are listed apart.

    Where this can be wrong: a use of ``x`` that is no torch call (kept in a list and
    read after the step, returned, compared by identity, read by C++ code that gets it
    without a Python call); a later op that saves ``x`` (caught, being a use); an
    in-place variant with different semantics for some arguments; ops inside code that
    dispatches below Python (a C++ module's internals are invisible, and so are their
    uses). It is a list of places to look, not a rewrite to apply blindly.
    """

    def __init__(self, session: XraySession) -> None:
        self.session = session
        self.pending: dict[int, tuple[weakref.ref, dict[str, Any]]] = {}
        self.found: list[dict[str, Any]] = []
        self._names: dict[Any, Optional[str]] = {}

    def _inplace_name(self, func: Any) -> Optional[str]:
        try:
            return self._names[func]
        except (KeyError, TypeError):
            pass
        name = getattr(func, "__name__", "")
        ok = (name and not name.endswith("_") and not name.startswith("_")
              and name not in _NOT_CANDIDATES and hasattr(torch.Tensor, name + "_"))
        result = name + "_" if ok else None
        try:
            self._names[func] = result
        except TypeError:
            pass
        return result

    def uses(self, args: tuple, kwargs: dict) -> None:
        pending = self.pending
        for value in (*args, *kwargs.values()):
            items = value if isinstance(value, (list, tuple)) else (value,)
            for t in items:
                if isinstance(t, torch.Tensor):
                    entry = pending.get(id(t))
                    if entry is not None and entry[0]() is t:
                        del pending[id(t)]

    def consider(self, func: Any, args: tuple, out: Any) -> None:
        inplace = self._inplace_name(func)
        if inplace is None or not args or not isinstance(out, torch.Tensor):
            return
        x = args[0]
        if (not isinstance(x, torch.Tensor) or x.shape != out.shape or x.dtype != out.dtype
                or x.layout is not torch.strided or x._is_view() or out._is_view()
                or (x.is_leaf and x.requires_grad)):
            return
        key = storage_key(x)
        if key is None:
            return
        start, end = byte_range(x)
        if self.session.saved_over(key, start, end) is not None:
            return
        stack, _ = sites.capture(4, 1)
        self.pending[id(x)] = (weakref.ref(x), {
            "op": _op_name(func),
            "inplace": inplace, "bytes": end - start, "stack": stack,
            "shape": list(x.shape), "dtype": _describe_dtype(x.dtype)})

    def finish(self) -> None:
        """Forward ended (or recording did): what is still pending is reported, marked
        ``freed`` when its input is already gone -- then no later use is possible at all;
        an input still alive (optimizer state, a tensor the caller keeps) may be used after
        the step, which xray cannot see."""
        for ref, info in self.pending.values():
            info["freed"] = ref() is None
            self.found.append(info)
        self.pending.clear()


def _op_name(func: Any) -> str:
    qual = str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or "?")
    owner, _, name = qual.rpartition(".")
    if owner in ("TensorBase", "Tensor"):
        return f"Tensor.{name}"
    if owner in ("_VariableFunctionsClass", ""):
        module = getattr(func, "__module__", None) or "torch"
        return f"{'torch' if module.startswith('torch._C') or owner else module}.{name}"
    return qual


def xray(until: str = "exit", top: int = 10) -> XraySession:
    """Record what backward keeps over one training step: ``with gradguard.xray() as x:``
    around forward, ``backward()`` (and the optimizer step, if you like), then
    ``x.report()``, ``x.to_dict()``, ``x.write_html(path)``.

    ``until``: ``"exit"`` (the step is the whole block) or ``"next-forward"`` (stop at the
    first save after the first backward finished). ``top``: rows in the text report's
    tables."""
    return XraySession(until=until, top=top)


for _public in (XraySession, xray):
    _public.__module__ = "gradguard"
