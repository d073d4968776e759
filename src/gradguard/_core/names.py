"""Naming tensors for people: ``disc.fc.weight`` rather than ``f32[1,8]``.

Only used when a conflict is reported (rare), so it may be slow: it scans live
``nn.Module`` objects for a parameter or buffer on the same storage, then names the root
module after the variable that holds it in the user's live frames.
"""
from __future__ import annotations

import gc
import sys
from typing import Optional

import torch

from gradguard._core.registry import byte_range, storage_key


def _modules() -> list[torch.nn.Module]:
    # type() rather than isinstance(): isinstance reads __class__, which some deprecated
    # torch objects turn into a warning.
    module = torch.nn.Module
    return [o for o in gc.get_objects() if issubclass(type(o), module)]


def _root_name(root: torch.nn.Module) -> str:
    frame = sys._getframe(1)
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            for name, value in list(scope.items()):
                if value is root and not name.startswith("_"):
                    return name
        frame = frame.f_back
    return type(root).__name__


def module_path(t: torch.Tensor) -> Optional[str]:
    """Dotted path of the parameter or buffer sharing ``t``'s bytes, or None."""
    key = storage_key(t)
    if key is None:
        return None
    start, end = byte_range(t)
    modules = _modules()
    owner = None
    for m in modules:
        tensors = list(m._parameters.items()) + list(m._buffers.items())
        for local, p in tensors:
            if p is None or storage_key(p) != key:
                continue
            p_start, p_end = byte_range(p)
            if p_start < end and start < p_end:
                owner = (m, local)
                break
        if owner:
            break
    if owner is None:
        return None
    parent: dict[int, tuple[torch.nn.Module, str]] = {}
    for m in modules:
        for child_name, child in m._modules.items():
            if child is not None and id(child) not in parent:
                parent[id(child)] = (m, child_name)
    path = [owner[1]]
    m = owner[0]
    seen = set()
    while id(m) in parent and id(m) not in seen:
        seen.add(id(m))
        m, child_name = parent[id(m)]
        path.append(child_name)
    path.append(_root_name(m))
    return ".".join(reversed(path))
