"""Capturing the autograd graph around a confirmed conflict, as plain strings.

Runs inside backward when a conflict is confirmed (rare, never on the hot path). It
describes the neighbourhood of the backward node that needed the damaged tensor -- the
saving node, the node that produced the tensor, the saving node's other inputs, the ops
that consumed its output and the other ops that read the same tensor -- as the graph dict
that `gradguard._explain.picture` draws (``Conflict.graph``). No tensor and no autograd
node is kept: holding them would keep memory alive that PyTorch would have freed.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch.autograd.function import BackwardCFunction

from gradguard._explain.picture import (
    HIGHLIGHT,
    MAX_NEIGHBOURS,
    GraphBuilder,
    origin_nodes,
    saver_detail,
    tensor_node,
    write_node,
)
from gradguard._findings.model import Conflict, TensorInfo
from gradguard._findings.nodes import forward_op

MAX_VISIT = 200_000  # autograd nodes walked to find consumers (only on a conflict)


class _CaptureBuilder(GraphBuilder):
    def __init__(self) -> None:
        super().__init__()
        self._ids: dict[int, str] = {}  # id(autograd node) -> our id, during capture only

    def autograd(self, fn: Any, role: str, detail: Sequence[str] = (),
                 leaf_name: Optional[str] = None) -> str:
        """Add an autograd node, given as the node or as a `_Described` one."""
        key = fn.key if isinstance(fn, _Described) else id(fn)
        nid = self._ids.get(key)
        if nid is None:
            if isinstance(fn, _Described):
                label, extra = fn.label, list(fn.detail)
            else:
                label, extra = _describe_fn(fn, leaf_name)
            nid = self._ids[key] = self.add(label, [*extra, *detail],
                                                "leaf" if label == "AccumulateGrad" and
                                                role not in HIGHLIGHT else role)
        return nid

    def group(self, fns: Sequence[Any], role: str, link: Callable[[str], None]) -> None:
        """Add up to MAX_NEIGHBOURS autograd nodes, each linked by ``link(id)``."""
        for fn in fns[:MAX_NEIGHBOURS]:
            link(self.autograd(fn, role))
        if len(fns) > MAX_NEIGHBOURS:
            link(self.add(f"... {len(fns) - MAX_NEIGHBOURS} more", (), "more"))


class _Described:
    """An autograd node as the picture needs it, holding no node: the consumers found by
    one walk of the graph are cached for the rest of that backward."""

    __slots__ = ("key", "label", "detail")

    def __init__(self, fn: Any) -> None:
        self.key = id(fn)
        self.label, detail = _describe_fn(fn)
        self.detail = tuple(detail)


def _describe_fn(fn: Any, leaf_name: Optional[str] = None) -> tuple[str, list[str]]:
    """Label and detail lines of an autograd node: ``MulBackward0`` / ``mul``; a leaf's
    AccumulateGrad is described (``leaf f32[4]``), and named when it is the conflict's own
    tensor (naming others would cost a scan of every live module each)."""
    name = fn.name()
    if name.endswith("AccumulateGrad"):
        var = getattr(fn, "variable", None)
        if var is None:
            return "AccumulateGrad", ["leaf"]
        info = TensorInfo(dtype=str(var.dtype), shape=tuple(var.shape), device=str(var.device))
        return "AccumulateGrad", [leaf_name or "leaf", info.short()]
    op = forward_op(name)
    return name, [f"forward: {op}"] if op and op != name else []


def _backward_roots() -> list[Any]:
    """Root nodes of the running backward, read from torch's ``_engine_run_backward``
    frame: this thread's (CPU) or the thread waiting in backward (GPU device threads)."""
    roots = _roots_on(sys._getframe(1))
    if roots is None:
        me = threading.get_ident()
        # Never this thread's frames from here: a list holding our own frame would be a
        # reference cycle keeping the graph alive until the next gc run.
        for ident, frame in sys._current_frames().items():
            if ident != me:
                roots = _roots_on(frame)
                if roots is not None:
                    break
    return roots or []


def _roots_on(frame: Any) -> Optional[list[Any]]:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_engine_run_backward" and "autograd" in code.co_filename:
            outputs = frame.f_locals.get("t_outputs") or ()
            nodes = [getattr(out, "grad_fn", None) if isinstance(out, torch.Tensor)
                     else getattr(out, "node", None) for out in outputs]
            return [n for n in nodes if n is not None]
        frame = frame.f_back
    return None


# The last backward's walk: (graph task id, {id(node): the nodes whose inputs include it,
# described}). The graph is walked once per backward however many conflicts it confirms;
# only descriptions are kept (no node, so no graph memory outlives its backward).
_consumers: tuple[int, dict[int, list[_Described]]] = (-1, {})
_consumers_lock = threading.Lock()


def _parents(targets: Sequence[Any]) -> dict[int, list[_Described]]:
    """For each target node, the nodes whose inputs include it (its forward consumers)."""
    global _consumers
    task = torch._C._current_graph_task_id()
    with _consumers_lock:
        cached_task, consumers = _consumers
    if task < 0 or cached_task != task:
        consumers = _walk(_backward_roots())
        if task >= 0:
            with _consumers_lock:
                _consumers = (task, consumers)
    return {id(t): consumers.get(id(t), []) for t in targets if t is not None}


def _walk(roots: Iterable[Any]) -> dict[int, list[_Described]]:
    consumers: dict[int, list[_Described]] = {}
    described: dict[int, _Described] = {}
    stack = [r for r in roots if r is not None]
    while stack and len(described) < MAX_VISIT:
        fn = stack.pop()
        if id(fn) in described:
            continue
        here = described[id(fn)] = _Described(fn)
        for child, _ in fn.next_functions:
            if child is None:
                continue
            hits = consumers.setdefault(id(child), [])
            if all(h.key != here.key for h in hits):
                hits.append(here)
            if id(child) not in described:
                stack.append(child)
    return consumers


def _producer(node: Any, rec: Any) -> tuple[Optional[Any], bool]:
    """The node that produced the saved tensor, and whether it is ``node``'s own output."""
    inputs = [fn for fn, _ in node.next_functions if fn is not None]
    if rec.producer is None or rec.producer is type(None):  # a leaf: AccumulateGrad
        for fn in inputs:
            if getattr(fn, "variable", None) is rec.tensor:
                return fn, False
        return None, False
    candidates = [(fn, nr) for fn, nr in node.next_functions
                  if fn is not None and type(fn) is rec.producer]
    # `_raw_saved_<name>` exists for each saved tensor and reads it without unpacking
    # (reading `_saved_<name>` would run the unpack hook we are inside).
    saved = [a[len("_raw_saved_"):] for a in dir(node) if a.startswith("_raw_saved_")]
    output = type(node) is rec.producer and any(n.startswith("result") for n in saved)
    if output and saved and all(n.startswith("result") for n in saved):
        return node, True  # it saves only outputs (tanh, sigmoid, exp, softmax)
    if candidates and output:  # same op chained (tanh(tanh(x))): tell them apart by shape
        shape = list(rec.tensor.shape)
        candidates = [(fn, nr) for fn, nr in candidates
                      if list(fn._input_metadata[nr].shape) == shape]
    if candidates:
        return candidates[0][0], False
    return (node, True) if output else (None, False)


def capture(node: Any, rec: Any, conflict: Conflict) -> Optional[dict[str, Any]]:
    """The graph around ``conflict`` (see the module docstring), or None if it cannot be
    read. ``node`` is the backward node that needed ``rec``'s tensor (None outside
    backward). Never raises: a picture must not break detection."""
    if node is None:
        return None
    try:
        return _capture(node, rec, conflict)
    except Exception:  # noqa: BLE001 - diagnostic only; the conflict itself stands
        return None


def _capture(node: Any, rec: Any, c: Conflict) -> dict[str, Any]:
    b = _CaptureBuilder()
    tid = tensor_node(b, c)
    write_node(b, c, tid)
    origin_nodes(b, c, tid)
    saver = b.autograd(node, "saver", saver_detail(c))
    producer, is_output = _producer(node, rec)
    parents = _parents([node, producer])
    inputs = [fn for fn, _ in node.next_functions if fn is not None and fn is not producer]
    if is_output:  # saver -> tensor -> its consumers; the saved edge points back up
        b.group(inputs, "input", lambda n: b.edge(n, saver))
        b.edge(saver, tid, "output")
        b.edge(tid, saver, "saved for backward", role="saved", back=True)
        b.group(parents.get(id(node), []), "consumer", lambda n: b.edge(tid, n))
    else:  # producer -> tensor -> saver (with its other inputs) -> consumers
        if producer is not None:
            b.edge(b.autograd(producer, "producer",
                              leaf_name=c.tensor.name if c.tensor else None), tid)
        b.edge(tid, saver, "saved for backward", role="saved")
        b.group(inputs, "input", lambda n: b.edge(n, saver))
        b.group(parents.get(id(node), []), "consumer", lambda n: b.edge(saver, n))
        if producer is not None:
            readers = [p for p in parents.get(id(producer), []) if p.key != id(node)]
            b.group(readers, "reader", lambda n: b.edge(tid, n))
    return b.graph()




MAX_SEARCH = 5_000  # autograd nodes walked to find the saver at a write (when="write")


def saving_node(rec: Any, frames: Sequence[Any]) -> Optional[str]:
    """The name of the backward node that saved ``rec``'s tensor, asked at a write under
    ``when="write"`` (no backward runs yet to say it): the nodes reachable from the
    tensors in the user's live ``frames`` (and the saved tensor's own node, for a saved
    output) are searched for the one whose saved tensor *is* the record's. Only when a
    conflict is built, never on the hot path; None when not found. Never raises."""
    try:
        return _saving_node(rec, frames)
    except Exception:  # noqa: BLE001 - the report goes out with "an earlier op"
        return None


def _saving_node(rec: Any, frames: Sequence[Any]) -> Optional[str]:
    stack = [value.grad_fn for frame in frames for value in frame.f_locals.values()
             if isinstance(value, torch.Tensor) and value.grad_fn is not None]
    seen: set[int] = set()
    while stack and len(seen) < MAX_SEARCH:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if any(v is rec.tensor for v in _saved_values(fn)):
            return str(fn.name())
        stack.extend(child for child, _ in fn.next_functions if child is not None)
    # An op that saved its own output (sigmoid, tanh, exp): unpacking hands back a new
    # tensor object (with the node as grad_fn) on the same bytes.
    original = rec.source() if rec.source is not None else None
    own = original.grad_fn if original is not None else None
    if own is not None and any(_same_tensor(v, rec.tensor) for v in _saved_values(own, "result")):
        return str(own.name())
    return None


_SAVED_ATTRS: dict[type, tuple[str, ...]] = {}


def _saved_values(fn: Any, prefix: str = "") -> list[Any]:
    """The tensors node ``fn`` saved (those named ``_saved_<prefix>...``), unpacked
    through gradguard's hook (which hands back the tensor it kept)."""
    names = _SAVED_ATTRS.get(type(fn))
    if names is None:
        # `_raw_saved_<name>` marks each saved tensor; `_saved_<name>` unpacks it.
        names = _SAVED_ATTRS[type(fn)] = (
            ("saved_tensors",) if isinstance(fn, BackwardCFunction) else
            tuple(a[len("_raw"):] for a in dir(fn) if a.startswith("_raw_saved_")))
    out: list[Any] = []
    for name in names:
        if not name.startswith(f"_saved_{prefix}") and name != "saved_tensors":
            continue
        try:
            raw = "_raw_saved_tensors" if name == "saved_tensors" else "_raw" + name
            if not _ours(getattr(fn, raw)):
                continue
            value = getattr(fn, name)
        except Exception:  # noqa: BLE001, S112 - freed, or damaged: not the one asked for
            continue
        out.extend(value if isinstance(value, (tuple, list)) else (value,))
    return out


def _ours(raw: Any) -> bool:
    """Whether every saved tensor in ``raw`` (a `SavedTensor` or a tuple of them) unpacks
    through a gradguard session's hook: other hooks may do anything when asked (a
    non-reentrant checkpoint's recomputes its region), so those are never unpacked."""
    items = raw if isinstance(raw, (tuple, list)) else (raw,)
    for item in items:
        hook = getattr(item, "unpack_hook", None)
        if not getattr(getattr(hook, "__self__", None), "_gradguard_session", False):
            return False
    return True


def _same_tensor(a: Any, b: torch.Tensor) -> bool:
    return (isinstance(a, torch.Tensor) and a.data_ptr() == b.data_ptr()
            and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype)
