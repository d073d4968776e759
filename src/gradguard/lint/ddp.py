"""DistributedDataParallel forwards (GG113): a DDP model built in the scope, called
twice before the backward of a loss built from the first call.

DDP's pre-forward hook broadcasts the module buffers from rank 0 in place
(``broadcast_buffers=True``, the default; ``forward_sync_buffers`` in newer
releases) whenever the forward before it ran with grad enabled and outside
``no_sync()`` -- also under ``torch.no_grad()``.  BatchNorm saves its
``running_mean``/``running_var`` for backward, so the second forward's broadcast
bumps the version of tensors the first forward's graph saved.

Dependence on a forward is tracked only in files that mention
``DistributedDataParallel``: ``Val.fwd`` holds, per DDP model, the earliest forward
whose graph a value reaches; ``ExpressionEvaluator.ev`` carries it from operands to
results, and drops it for values that cannot require grad (``.detach()``, no_grad).
"""
from __future__ import annotations

import ast
from typing import Optional

from gradguard._findings.twins import dotted
from gradguard.lint.names import _is_true
from gradguard.lint.values import OTHER, DdpForward, DdpHazard, DdpModel, Val, exclusive

DDP_CLASSES = frozenset({"torch.nn.parallel.DistributedDataParallel",
                         "torch.nn.parallel.distributed.DistributedDataParallel"})
_BROADCAST_POSITION = 4  # DistributedDataParallel(module, device_ids, output_device, dim, broadcast_buffers, ...)


def ddp_model(node: ast.Call) -> Val:
    """The value of ``DistributedDataParallel(...)``: a model that broadcasts buffers at
    each forward, unless that is switched off (or set from a value we cannot read)."""
    if any(k.arg is None for k in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
        return Val(OTHER)
    setting: Optional[ast.expr] = None
    for name in ("forward_sync_buffers", "broadcast_buffers"):  # the first wins when both are given
        kw = next((k.value for k in node.keywords if k.arg == name), None)
        if kw is not None and not (isinstance(kw, ast.Constant) and kw.value is None):
            setting = kw
            break
    if setting is None and len(node.args) > _BROADCAST_POSITION:
        setting = node.args[_BROADCAST_POSITION]
    if setting is not None and not _is_true(setting):
        return Val(OTHER)  # False, or `broadcast_buffers=args.bb`: not known to broadcast
    return Val(OTHER, ddp=DdpModel(node))


def record_forward(model: DdpModel, node: ast.Call, key: int, branch: tuple, no_grad: bool,
                   no_sync: bool) -> DdpForward:
    f = DdpForward(key, node, model, branch, grad=not no_grad, arms=not no_grad and not no_sync)
    model.forwards.append(f)
    return f


def merge_forwards(a: tuple, b: tuple) -> tuple:
    """Per DDP model, the earlier of the forwards in ``a`` and ``b``."""
    if not a:
        return b
    if not b or a == b:
        return a
    best: dict = {}
    for f in a + b:
        cur = best.get(id(f.model))
        if cur is None or f.key < cur.key:
            best[id(f.model)] = f
    return tuple(best.values())


def hazard(loss: Val, backward: ast.AST, here: tuple) -> Optional[DdpHazard]:
    """The later forward whose broadcast overwrites what the graph of ``loss`` saved."""
    for first in loss.fwd:
        if not first.grad:
            continue
        prev = first
        for f in first.model.forwards:
            if f.key <= first.key or exclusive(f.branch, here) or exclusive(f.branch, first.branch):
                continue
            if prev.arms:
                func = f.node.func
                owner = func.value if isinstance(func, ast.Attribute) and func.attr == "forward" else func
                return DdpHazard(first.node, f.node, backward, dotted(owner) or "model")
            prev = f
    return None
