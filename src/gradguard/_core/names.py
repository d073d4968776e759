"""Naming tensors for people: ``disc.fc.weight`` rather than ``f32[1,8]``.

Only used when a conflict is reported (rare), so it may be slow: it scans live
``nn.Module`` objects for a parameter or buffer on the same storage, then names the root
module after the variable that holds it in the user's live frames.
"""
from __future__ import annotations

import gc
from typing import Optional

import torch

from gradguard._core.registry import byte_range, storage_key
from gradguard._core.sites import (
    innermost_user_frame,
    is_internal_file,
    user_frames_of_other_threads,
)


def _modules() -> list[torch.nn.Module]:
    # type() rather than isinstance(): isinstance reads __class__, which some deprecated
    # torch objects turn into a warning.
    module = torch.nn.Module
    return [o for o in gc.get_objects() if issubclass(type(o), module)]


def _root_name(root: torch.nn.Module) -> str:
    """The variable holding ``root`` in the user's live frames (this thread's first, then
    the others': on a GPU, backward's hooks run on a device thread with no user frames)."""
    starts = [innermost_user_frame(1)] + user_frames_of_other_threads()
    for frame in starts:
        while frame is not None:
            if not is_internal_file(frame.f_code.co_filename):
                for scope in (frame.f_locals, frame.f_globals):
                    for name, value in list(scope.items()):
                        if value is root and not name.startswith("_"):
                            return name
            frame = frame.f_back
    return type(root).__name__


def module_path(t: torch.Tensor) -> tuple[Optional[str], bool]:
    """Dotted path of the parameter or buffer sharing ``t``'s bytes (or None), and whether
    it is a parameter."""
    key = storage_key(t)
    if key is None:
        return None, False
    start, end = byte_range(t)
    modules = _modules()
    owner = None
    for m in modules:
        tensors: list[tuple[str, Optional[torch.Tensor], bool]] = [
            (n, p, True) for n, p in m._parameters.items()]
        tensors += [(n, b, False) for n, b in m._buffers.items()]
        for local, p, is_param in tensors:
            if p is None or storage_key(p) != key:
                continue
            p_start, p_end = byte_range(p)
            if p_start < end and start < p_end:
                owner = (m, local, is_param)
                break
        if owner:
            break
    if owner is None:
        return None, False
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
    return ".".join(reversed(path)), owner[2]
