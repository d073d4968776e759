"""`gradguard.verify()`: are this step's gradients what the program as written produces?

``verify(step_fn, *args)`` runs ``step_fn(*args)`` twice from the same state:

1. the **reference** run, under `snapshot_saved_tensors` (every tensor autograd saves is
   copied at the moment it is saved, so no in-place write can reach what backward reads);
2. the **normal** run, under ``gradguard.detect(on_conflict="record")``.

Before each run it sets the same RNG state (torch CPU and CUDA generators, Python's
``random``, NumPy's global generator) and the same values of everything it can restore:
parameters, buffers and gradients of the `nn.Module`s among the arguments, the state of
the optimizers among them (``state_dict``/``load_state_dict``, so a step that calls
``optimizer.step()`` is fine), other arguments with ``state_dict``/``load_state_dict``
(LR schedulers, ``GradScaler``), and the values of tensor arguments. The normal run goes
last, so afterwards the program's state is what one ordinary call of the step leaves.

Each tracked tensor's gradient is taken right after its last accumulation in the step
(a post-accumulate-grad hook), so a step that ends with ``zero_grad()`` is compared too;
tensors in the step's return value are compared as well (for ``torch.autograd.grad``).
"""
from __future__ import annotations

import copy
import math
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from gradguard._core.snapshot import snapshot_saved_tensors
from gradguard._detect.session import DetectSession
from gradguard._findings.model import Conflict
from gradguard.errors import InplaceConflictError

__all__ = ["verify", "VerifyResult", "GradDifference"]

_MAX_DEPTH = 3  # containers (list, tuple, dict) searched for modules, optimizers, tensors


@dataclass
class GradDifference:
    """One tensor whose gradient (or returned value) differs from the reference."""

    name: str
    max_abs_err: float
    max_rel_err: float  # max of |normal - reference| / |reference| (inf where it is 0)
    mismatched: int  # elements outside atol + rtol * |reference|
    numel: int
    shape: tuple[int, ...] = ()
    note: str = ""  # e.g. "no gradient in the normal run"

    def __str__(self) -> str:
        shape = "[" + ",".join(map(str, self.shape)) + "]"
        text = (f"{self.name}{shape}  max abs err {self.max_abs_err:.3g}  max rel err "
                f"{self.max_rel_err:.3g}  ({self.mismatched} of {self.numel} elements)")
        return f"{text}  {self.note}" if self.note else text


@dataclass
class VerifyResult:
    """What `verify` found. ``ok`` is True when every checked gradient matched."""

    differences: list[GradDifference]
    conflicts: list[Conflict]
    checked: list[str]  # names of the tensors compared (gradients, then return values)
    rtol: float
    atol: float
    error: Optional[str] = None  # the normal run raised InplaceConflictError (stock
    # PyTorch raises there too); no comparison was made
    coverage_gaps: list[str] = field(default_factory=list)
    value: Any = field(default=None, repr=False)  # what the normal run returned

    @property
    def ok(self) -> bool:
        return not self.differences and self.error is None

    def report(self) -> str:
        from gradguard._explain.text import render_text

        tol = f"rtol={self.rtol:g}, atol={self.atol:g}"
        if self.error is not None:
            lines = ["gradguard.verify: the step failed as written (stock PyTorch fails "
                     "too); no gradients compared", "", self.error]
        elif self.differences:
            lines = [f"gradguard.verify: {len(self.differences)} of {len(self.checked)} "
                     "checked tensors differ from the reference run (every saved tensor "
                     f"copied at save time); {tol}"]
            lines += [f"  {d}" for d in self.differences]
            if not self.conflicts:
                lines += ["", "detect found no conflict: the difference may come from "
                          "non-deterministic ops, from side effects of running the step "
                          "twice, or from state verify() could not restore (see "
                          "gradguard.verify's documentation)"]
        else:
            lines = [f"gradguard.verify: all {len(self.checked)} checked tensors match the "
                     f"reference run; {tol}"]
        if self.conflicts:
            lines += ["", f"conflicts found by detect ({len(self.conflicts)}):", "",
                      render_text(self.conflicts, self.coverage_gaps)]
        return "\n".join(lines)

    __str__ = report


# -- finding what to check and what to restore ------------------------------------------------
class _Found:
    def __init__(self) -> None:
        self.modules: list[tuple[str, nn.Module]] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.stateful: list[Any] = []  # LR schedulers, GradScaler, ...
        self.tensors: list[tuple[str, torch.Tensor]] = []

    def walk(self, value: Any, name: str, depth: int = 0) -> None:
        if isinstance(value, nn.Module):
            self.modules.append((name, value))
        elif isinstance(value, torch.optim.Optimizer):
            self.optimizers.append(value)
        elif isinstance(value, torch.Tensor):
            self.tensors.append((name, value))
        elif depth < _MAX_DEPTH and isinstance(value, Mapping):
            for k, v in value.items():
                self.walk(v, f"{name}[{k!r}]", depth + 1)
        elif depth < _MAX_DEPTH and isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self.walk(v, f"{name}[{i}]", depth + 1)
        elif callable(getattr(value, "state_dict", None)) and callable(
                getattr(value, "load_state_dict", None)) and not isinstance(value, type):
            self.stateful.append(value)


def _default_params(found: _Found) -> list[tuple[str, torch.Tensor]]:
    """Parameters (requiring grad) of the modules among the arguments, named as in
    ``named_parameters()`` (prefixed with the argument when there are several modules),
    then the optimizers' other parameters, then leaf tensor arguments requiring grad."""
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()

    def add(name: str, t: torch.Tensor) -> None:
        if id(t) not in seen and t.requires_grad and t.is_leaf:
            seen.add(id(t))
            out.append((name, t))

    single = len(found.modules) == 1
    for mname, module in found.modules:
        for pname, p in module.named_parameters():
            add(pname if single else f"{mname}.{pname}", p)
    for k, opt in enumerate(found.optimizers):
        for g, group in enumerate(opt.param_groups):
            for i, p in enumerate(group["params"]):
                add(f"optimizer{k}.param_groups[{g}]['params'][{i}]", p)
    for name, t in found.tensors:
        add(name, t)
    return out


def _explicit_params(params: Any) -> list[tuple[str, torch.Tensor]]:
    items: list[tuple[str, torch.Tensor]]
    if isinstance(params, nn.Module):
        items = list(params.named_parameters())
    elif isinstance(params, torch.Tensor):
        items = [("params", params)]
    elif isinstance(params, Mapping):
        items = list(params.items())
    else:
        try:
            seq = list(params)
        except TypeError:
            raise TypeError("params must be an nn.Module, a tensor, a dict of name -> tensor "
                            "or an iterable of tensors or (name, tensor) pairs, not "
                            f"{type(params).__name__}") from None
        items = [(v[0], v[1]) if isinstance(v, tuple) and len(v) == 2 else (f"params[{i}]", v)
                 for i, v in enumerate(seq)]
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"params entry {name!r} is a {type(t).__name__}, not a tensor")
        if not (t.requires_grad and t.is_leaf):
            raise ValueError(f"params entry {name!r} must be a leaf tensor that requires grad "
                             "(a parameter, or a tensor made with requires_grad=True): only "
                             "leaves accumulate .grad")
    return [(str(n), t) for n, t in items]


class _State:
    """Values verify() restores before the second run."""

    def __init__(self, found: _Found, params: list[tuple[str, torch.Tensor]]) -> None:
        tensors: dict[int, torch.Tensor] = {}
        grads: dict[int, torch.Tensor] = {}
        for _, module in found.modules:
            for t in (*module.parameters(), *module.buffers()):
                tensors[id(t)] = t
        for opt in found.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    tensors[id(p)] = p
        for _, t in (*found.tensors, *params):
            tensors[id(t)] = t
        for t in tensors.values():
            if t.is_leaf and t.requires_grad:
                grads[id(t)] = t
        with torch.no_grad():
            self.values = [(t, t.detach().clone()) for t in tensors.values()]
            self.grads = [(t, None if t.grad is None else t.grad.detach().clone())
                          for t in grads.values()]
        self.optimizers = [(o, copy.deepcopy(o.state_dict())) for o in found.optimizers]
        self.stateful = [(o, copy.deepcopy(o.state_dict())) for o in found.stateful]
        self.rng = _rng_state()

    def restore(self) -> None:
        with torch.no_grad():
            for t, value in self.values:
                if t.shape == value.shape and t.dtype == value.dtype:
                    t.copy_(value)
                else:  # the step swapped it (`p.data = ...`): swap back
                    t.data = value.clone()  # noqa: GG201 (a different shape: copy_ cannot)
            for t, grad in self.grads:
                t.grad = None if grad is None else grad.clone()
        for obj, state in (*self.optimizers, *self.stateful):
            obj.load_state_dict(copy.deepcopy(state))
        _set_rng_state(self.rng)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        state["numpy"] = numpy.random.get_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        sys.modules["numpy"].random.set_state(state["numpy"])


# -- running and comparing ---------------------------------------------------------------------
def _run(step_fn: Callable, args: tuple, kwargs: dict,
         params: list[tuple[str, torch.Tensor]], context: Any) -> tuple[Any, list]:
    """Run the step; return its value and each param's gradient after its last
    accumulation (or its ``.grad`` at the end when no accumulation happened)."""
    grads: list[Optional[torch.Tensor]] = [None] * len(params)
    fired = [False] * len(params)

    def hook_for(i: int) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            fired[i] = True
            grads[i] = None if p.grad is None else p.grad.detach().clone()
        return hook

    handles = [p.register_post_accumulate_grad_hook(hook_for(i))
               for i, (_, p) in enumerate(params)]
    try:
        with context:
            value = step_fn(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    for i, (_, p) in enumerate(params):
        if not fired[i] and p.grad is not None:
            grads[i] = p.grad.detach().clone()
    return value, grads


def _returned_tensors(value: Any, name: str = "return", depth: int = 0) -> list:
    if isinstance(value, torch.Tensor):
        return [(name, value.detach().clone())]
    out: list = []
    if depth < _MAX_DEPTH and isinstance(value, Mapping):
        for k, v in value.items():
            out += _returned_tensors(v, f"{name}[{k!r}]", depth + 1)
    elif depth < _MAX_DEPTH and isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out += _returned_tensors(v, f"{name}[{i}]", depth + 1)
    return out


def compare(name: str, normal: Optional[torch.Tensor], reference: Optional[torch.Tensor],
            rtol: float, atol: float) -> Optional[GradDifference]:
    """A `GradDifference` if ``normal`` is not within ``atol + rtol * |reference|`` of
    ``reference`` everywhere (NaN matches NaN), else None."""
    if normal is None and reference is None:
        return None
    if normal is None or reference is None or normal.shape != reference.shape:
        t = normal if reference is None else reference
        assert t is not None
        note = ("no gradient in the normal run" if normal is None else
                "no gradient in the reference run" if reference is None else
                f"shape {tuple(normal.shape)} vs {tuple(reference.shape)} in the reference")
        return GradDifference(name, math.inf, math.inf, t.numel(), t.numel(), tuple(t.shape),
                              note)
    a, b = (x.to_dense() if x.is_sparse else x for x in (normal, reference))
    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a, b = a.detach().to(wide), b.detach().to(wide)
    both_nan = torch.isnan(a) & torch.isnan(b)
    diff = torch.where(both_nan, torch.zeros((), dtype=torch.float64, device=a.device),
                       (a - b).abs())
    diff = torch.nan_to_num(diff, nan=math.inf)
    bad = diff > atol + rtol * b.abs()
    mismatched = int(bad.sum())
    if not mismatched:
        return None
    scale = b.abs()
    rel = torch.where(scale > 0, diff / scale,
                      torch.where(diff > 0, math.inf, 0.0).to(diff.dtype))
    return GradDifference(name, float(diff.max()), float(rel.max()), mismatched, a.numel(),
                          tuple(normal.shape))


def verify(step_fn: Callable[..., Any], *args: Any, params: Any = None, rtol: float = 1e-5,
           atol: float = 1e-6, kwargs: Optional[Mapping[str, Any]] = None) -> VerifyResult:
    """Run ``step_fn(*args, **kwargs)`` normally and against a reference no in-place write
    can corrupt, and report every gradient that differs (see the module docstring).

    ``params``: what to check. Default: the parameters of the `nn.Module`s among the
    arguments (named as in ``named_parameters()``), the optimizers' parameters, and leaf
    tensor arguments that require grad. Or pass an ``nn.Module``, a dict of name ->
    tensor, or an iterable of tensors or ``(name, tensor)`` pairs (e.g.
    ``model.named_parameters()``). A gradient differs where
    ``|normal - reference| > atol + rtol * |reference|``.

    Limits: the step runs twice, so its side effects happen twice (logging, counters,
    iterators it pulls batches from: pass the batch as an argument); state outside the
    arguments (globals, closures, other generators) is not restored; non-deterministic
    ops (CUDA atomics; set ``torch.use_deterministic_algorithms(True)``) can differ
    between the runs by themselves; saved-tensor hooks inside the step (such as
    ``save_on_cpu``, checkpointing) replace the reference's copying while active; tensors
    a custom ``autograd.Function`` keeps on ``ctx`` are not copied.
    """
    if not callable(step_fn):
        raise TypeError("verify() needs the step function first, e.g. "
                        f"gradguard.verify(train_step, model, batch), not {type(step_fn).__name__}")
    for label, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(f"{label} must be a number >= 0, not {tol!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a dict of keyword arguments for the step, not "
                        f"{type(kwargs).__name__}")
    kwargs = dict(kwargs or {})
    found = _Found()
    for i, a in enumerate(args):
        found.walk(a, f"args[{i}]")
    for k, v in kwargs.items():
        found.walk(v, k)
    checked = _default_params(found) if params is None else _explicit_params(params)
    if not checked and params is None:
        raise ValueError("verify() found no tensor that requires grad among the step's "
                         "arguments: pass the model (or optimizer) as an argument, e.g. "
                         "verify(step, model, batch), or name them with params=...")


    state = _State(found, checked)
    try:
        ref_value, ref_grads = _run(step_fn, args, kwargs, checked, snapshot_saved_tensors())
        ref_returned = _returned_tensors(ref_value)
        del ref_value
    finally:
        state.restore()  # the reference run leaves no trace
    session = DetectSession(on_conflict="record")
    error = None
    value = None
    try:
        value, grads = _run(step_fn, args, kwargs, checked, session)
    except InplaceConflictError as exc:
        error = str(exc)
    result = VerifyResult(differences=[], conflicts=list(session.conflicts),
                          checked=[n for n, _ in checked], rtol=float(rtol), atol=float(atol),
                          error=error, coverage_gaps=list(session.coverage_gaps), value=value)
    if error is not None:
        return result
    returned = _returned_tensors(value)
    if len(returned) != len(ref_returned):
        raise ValueError("the step returned a different number of tensors in its two runs "
                         f"({len(ref_returned)} then {len(returned)}); verify() compares "
                         "them, so the step must return the same structure each time")
    for (name, _), g, ref in zip(checked, grads, ref_grads):
        diff = compare(name, g, ref, rtol, atol)
        if diff is not None:
            result.differences.append(diff)
    for (name, v), (_, ref) in zip(returned, ref_returned):
        result.checked.append(name)
        diff = compare(name, v, ref, rtol, atol)
        if diff is not None:
            result.differences.append(diff)
    return result


for _public in (GradDifference, VerifyResult, verify):
    _public.__module__ = "gradguard"
