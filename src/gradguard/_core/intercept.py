"""Write interception: every Python-reachable entry point that writes a tensor in place.

Why patching and not a ``TorchFunctionMode``: a mode runs Python on *every* torch call
(measured 1.07x-1.23x for an empty ``TorchDispatchMode``), while in-place writes are a
small fraction of calls. Patching only the writing entry points costs nothing on the
others, sees writes made inside torch's own Python code (optimizers' ``_foreach_*_``,
``F.embedding``'s ``embedding_renorm_``, ``F.relu(inplace=True)``'s ``torch.relu_``) and
works on every thread. Writes made from C++ (e.g. batch norm's running stats) are not
seen here; the version re-check at unpack is the net for those.

Patches are installed when the first gradguard session starts and then stay, inactive,
when the last one exits: an inactive wrapper is one global read before the original call,
while re-patching ~700 attributes on every `with detect():` cost ~1.5 ms (measured on a
ResNet step entered per step). `uninstall()` restores the exact original attributes.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Iterable, Optional

import torch

from gradguard._core.patching import Patches
from gradguard._core.registry import storage_key

# Bound once: dynamo recognises this function by identity and folds it to True while
# tracing, so compiled code skips gradguard's bookkeeping (and guards on none of it).
_is_compiling = torch.compiler.is_compiling

# In-place Tensor methods that do not write tensor data or metadata.
_NOT_WRITES = frozenset({
    "requires_grad_", "share_memory_", "_dtensor__new__", "detach_", "_coalesced_",
    "retain_grad", "record_stream",
})
# In-place ops that replace metadata or storage rather than bytes: count as whole writes.
_METADATA_WRITES = frozenset({
    "set_", "resize_", "resize_as_", "as_strided_", "squeeze_", "unsqueeze_", "t_",
    "transpose_", "swapaxes_", "swapdims_", "sparse_resize_", "sparse_resize_and_clear_",
    "resize_as_sparse_", "_resize_output_",
})
_AUGMENTED = {
    "__iadd__": "+=", "__isub__": "-=", "__imul__": "*=", "__itruediv__": "/=",
    "__idiv__": "/=", "__ifloordiv__": "//=", "__imod__": "%=", "__ipow__": "**=",
    "__iand__": "&=", "__ior__": "|=", "__ixor__": "^=", "__ilshift__": "<<=",
    "__irshift__": ">>=",
}


class _State(threading.local):
    busy = False  # inside gradguard's own bookkeeping: do not intercept our own writes
    # Storage keys of tensors the op now running saves although its backward never reads
    # their values (a training-mode batch norm's running statistics), or None.
    unread: Optional[set] = None
    # A session's label for the code running now (a checkpoint's recomputation), copied
    # onto each write recorded meanwhile (`WriteRecord.during`), or None.
    during: Any = None


state = _State()

# The object told about writes: set by install(), see `gradguard._core.runtime.Runtime`.
_listener: Any = None
_installed = Patches()
_lock = threading.Lock()


def _targets_first(args: tuple, kwargs: dict) -> Iterable[torch.Tensor]:
    if args:
        t = args[0]
    else:
        t = kwargs.get("input", kwargs.get("self"))
    return (t,) if isinstance(t, torch.Tensor) else ()


def _targets_list(args: tuple, kwargs: dict) -> Iterable[torch.Tensor]:
    seq = args[0] if args else kwargs.get("self", ())
    return [t for t in seq if isinstance(t, torch.Tensor)]


def _targets_storage(args: tuple, kwargs: dict) -> Iterable[Any]:
    return (args[0],) if args and isinstance(args[0], torch.UntypedStorage) else ()


def _targets_out(args: tuple, kwargs: dict) -> Iterable[torch.Tensor]:
    out = kwargs.get("out")
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return ()


def _make_wrapper(orig: Callable, op: str, targets: Callable, whole: bool,
                  only_with_out: bool = False) -> Callable:
    """A pass-through to ``orig`` that first tells the listener which tensors it writes.
    ``only_with_out``: for functions that write only when called with ``out=``."""

    def gradguard_write(*args: Any, **kwargs: Any) -> Any:
        listener = _listener
        if (listener is None or (only_with_out and "out" not in kwargs) or state.busy
                or _is_compiling()):
            return orig(*args, **kwargs)
        # Nothing saved anywhere (every optimizer step after backward) and no storage
        # watched: skip the lookup, but keep the try below, which explains PyTorch's own
        # in-place errors.
        token = (listener.before_write(op, targets(args, kwargs), whole)
                 if listener.watching or listener.registry.maybe_live() else None)
        try:
            result = orig(*args, **kwargs)
        except BaseException as exc:
            # The written tensors first (an ``out=`` tensor is a keyword), then the inputs.
            listener.write_failed(token, op, exc if isinstance(exc, RuntimeError) else None,
                                  (*targets(args, kwargs), *args) if only_with_out else args)
            raise
        if token is not None:
            listener.after_write(token)
        return result

    # Name, qualname, module, doc and (through __wrapped__) signature of the original.
    functools.update_wrapper(gradguard_write, orig)
    return gradguard_write


_BN_STATS = ((3, "running_mean"), (4, "running_var"))


def _running_stats(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The running statistics a ``torch.batch_norm`` call updates in place (training with
    running stats), else []."""
    training = args[5] if len(args) > 5 else kwargs.get("training", False)
    if not training:
        return []
    found = [args[i] if len(args) > i else kwargs.get(name) for i, name in _BN_STATS]
    return [t for t in found if isinstance(t, torch.Tensor)]


def _batch_norm_wrapper(orig: Callable) -> Callable:
    """``torch.batch_norm``: in training mode the kernel updates ``running_mean`` and
    ``running_var`` in place, from C++, bumping no version: a write, told like any other.
    It also saves them, though its backward never reads them: marked so (`state.unread`)."""
    op = "torch.batch_norm (running statistics)"

    def batch_norm(*args: Any, **kwargs: Any) -> Any:
        listener = _listener
        stats = _running_stats(args, kwargs) if listener is not None else []
        if not stats or state.busy or _is_compiling():
            return orig(*args, **kwargs)
        token = (listener.before_write(op, stats, False)
                 if listener.registry.maybe_live() else None)
        previous = state.unread
        state.unread = {k for k in (storage_key(t) for t in stats) if k is not None}
        try:
            result = orig(*args, **kwargs)
        except BaseException as exc:
            listener.write_failed(token, op, exc if isinstance(exc, RuntimeError) else None, args)
            raise
        finally:
            state.unread = previous
        if token is not None:
            listener.after_write(token)
        return result

    functools.update_wrapper(batch_norm, orig)
    return batch_norm


def _data_setter_wrapper() -> property:
    stock: Any = torch._C.TensorBase.__dict__["data"]  # the C getset descriptor
    getter = stock.__get__
    setter = stock.__set__

    def set_data(self: torch.Tensor, value: torch.Tensor) -> None:
        listener = _listener
        if listener is None or state.busy or _is_compiling():
            return setter(self, value)
        token = listener.before_write("Tensor.data (assignment)", (self,), True)
        try:
            setter(self, value)
        except RuntimeError as exc:
            listener.write_failed(token, "Tensor.data (assignment)", exc, (self,))
            raise
        if token is not None:
            listener.after_write(token)

    def del_data(self: torch.Tensor) -> None:
        stock.__delete__(self)  # PyTorch's own error, as without gradguard

    return property(getter, set_data, del_data, doc=stock.__doc__)


def _out_capable_functions() -> list[str]:
    """Public ``torch.*`` functions with an overload taking ``out=``."""
    names = []
    for name in dir(torch._C._VariableFunctions):
        if name.startswith("_") or name.endswith("_"):
            continue
        try:
            schemas = torch._C._jit_get_schemas_for_operator("aten::" + name)
        except RuntimeError:
            continue
        if any(a.name == "out" and a.kwarg_only for s in schemas for a in s.arguments):
            if callable(getattr(torch, name, None)):
                names.append(name)
    return names


def _plan() -> list[tuple[Any, str, Callable]]:
    """(owner, attribute, replacement) for every entry point to patch."""
    plan: list[tuple[Any, str, Callable]] = []
    originals: dict[int, Callable] = {}  # id(original) -> wrapper, to patch re-exports too

    def add(owner: Any, name: str, op: str, targets: Callable, whole: bool) -> None:
        orig = getattr(owner, name, None)
        if orig is None:
            return
        wrapper = originals.get(id(orig))
        if wrapper is None:
            wrapper = originals[id(orig)] = _make_wrapper(orig, op, targets, whole)
        plan.append((owner, name, wrapper))

    tensor = torch.Tensor
    for name in dir(tensor):
        if name.endswith("_") and not name.startswith("__") and name not in _NOT_WRITES:
            add(tensor, name, f"Tensor.{name}", _targets_first, name in _METADATA_WRITES)
    for name, sym in _AUGMENTED.items():
        if hasattr(tensor, name):
            add(tensor, name, sym, _targets_first, False)
    add(tensor, "__setitem__", "Tensor.__setitem__", _targets_first, False)

    for name in dir(torch):
        if not name.endswith("_") or name.startswith("__") or name in _NOT_WRITES:
            continue
        if not callable(getattr(torch, name)) or name.startswith("_sobol"):
            continue
        lists = name.startswith(("_foreach_", "_fused_", "_amp_foreach"))
        targets = _targets_list if lists else _targets_first
        add(torch, name, f"torch.{name}", targets, name in _METADATA_WRITES)
    vf = torch._VF
    for name in ("dropout_", "feature_dropout_", "alpha_dropout_", "feature_alpha_dropout_",
                 "threshold_", "celu_", "selu_", "rrelu_"):
        if hasattr(torch._C._VariableFunctions, name):
            add(vf, name, f"torch.{name}", _targets_first, False)
    for name in dir(torch._C._nn):
        if name.endswith("_") and not name.startswith("_"):
            add(torch._C._nn, name, f"torch._C._nn.{name}", _targets_first, False)
    # torch.nn.functional re-exports some of the above (F.relu_ is torch.relu_).
    import torch.nn.functional as F

    for name in dir(F):
        obj = getattr(F, name)
        wrapper = originals.get(id(obj))
        if wrapper is not None:
            plan.append((F, name, wrapper))

    for name in _out_capable_functions():
        orig = getattr(torch, name)
        if id(orig) in originals:
            continue
        wrapper = originals[id(orig)] = _make_wrapper(orig, f"torch.{name}(out=)", _targets_out,
                                                      False, only_with_out=True)
        plan.append((torch, name, wrapper))
    plan.append((torch, "batch_norm", _batch_norm_wrapper(torch.batch_norm)))
    # FSDP frees a block's parameters by resizing their storage to 0 and re-materialises
    # them before backward: a write to every byte the storage held.
    resize = torch.UntypedStorage.resize_
    plan.append((torch.UntypedStorage, "resize_",
                 _make_wrapper(resize, "UntypedStorage.resize_", _targets_storage, True)))
    return plan


_PLAN: Optional[list[tuple[Any, str, Callable]]] = None


def install(listener: Any) -> None:
    """Patch every write entry point (once) and make `listener` the one told of writes
    (`before_write` / `write_failed`)."""
    global _listener, _PLAN
    with _lock:
        if _installed:
            _listener = listener
            return
        if _PLAN is None:
            _PLAN = _plan()
        for owner, name, wrapper in _PLAN:
            _installed.replace(owner, name, wrapper)
        _installed.replace(torch.Tensor, "data", _data_setter_wrapper())
        _register_for_torchscript(_PLAN)
        _listener = listener


def uninstall() -> None:
    global _listener
    with _lock:
        _listener = None
        _installed.restore()


def deactivate() -> None:
    """Leave the patches in place but make every wrapper a plain pass-through."""
    global _listener
    _listener = None


def installed() -> bool:
    return bool(_installed)


def active() -> bool:
    return _listener is not None


_registered_for_torchscript = False


def _register_for_torchscript(plan: list[tuple[Any, str, Callable]]) -> None:
    """TorchScript resolves ``torch.relu_`` by identity in its builtin table; teach it our
    wrappers so scripting a function while gradguard is active still works."""
    global _registered_for_torchscript
    if _registered_for_torchscript:
        return
    _registered_for_torchscript = True
    try:
        from torch.jit import _builtins
    except ImportError:  # pragma: no cover
        return
    table = _builtins._get_builtin_table()
    for _owner, _name, wrapper in plan:
        orig = getattr(wrapper, "__wrapped__", None)
        if orig is not None and id(orig) in table:
            table[id(wrapper)] = table[id(orig)]
