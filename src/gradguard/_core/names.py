"""Naming tensors for people: ``disc.fc.weight`` rather than ``f32[1,8]``.

Naming runs only when a conflict is reported, but a program with many conflicts reports
many, so it must not scan the heap each time. `ModuleIndex` keeps a weak set of every
``nn.Module`` that holds a parameter, buffer or submodule: seeded by one heap scan, the
first time a name is needed, and kept current by PyTorch's global registration hooks
(called when a module registers a parameter, buffer or child -- at construction, never in
forward). A lookup by storage then costs a dict access; the index is rebuilt only when a
module registered something since, or a write replaced a tensor's storage (``.data =``).
The root module is named after the variable holding it in the user's live frames.
"""
from __future__ import annotations

import gc
import threading
import weakref
from typing import Any, Optional

import torch

from gradguard._core.registry import byte_range, storage_key
from gradguard._core.sites import (
    innermost_user_frame,
    is_internal_file,
    user_frames_of_other_threads,
)

# storage key -> [(start, end, module (weakly), local name, is parameter)]: the index
# never keeps a model alive.
_Entries = dict[int, list[tuple[int, int, "weakref.ref[torch.nn.Module]", str, bool]]]


class ModuleIndex:
    def __init__(self) -> None:
        self._modules: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._seeded = False
        self._dirty = True
        self._by_storage: _Entries = {}
        self._parent: dict[int, tuple[weakref.ref[torch.nn.Module], str]] = {}

    def _seed(self) -> None:
        """One heap scan for the modules built before gradguard was asked for a name; then
        the registration hooks keep the set current."""
        from torch.nn.modules import module as module_mod

        module_mod.register_module_parameter_registration_hook(self._registered)
        module_mod.register_module_buffer_registration_hook(self._registered)
        module_mod.register_module_module_registration_hook(self._registered)
        # type() rather than isinstance(): isinstance reads __class__, which some
        # deprecated torch objects turn into a warning.
        cls = torch.nn.Module
        for obj in gc.get_objects():
            if issubclass(type(obj), cls):
                self._modules.add(obj)
        self._seeded = True

    def _registered(self, module: torch.nn.Module, name: str, value: Any) -> None:
        self._modules.add(module)
        if isinstance(value, torch.nn.Module):
            self._modules.add(value)
        self._dirty = True

    def mark_dirty(self) -> None:
        """A tensor's storage was replaced (``.data =``, ``set_``): rebuild before use."""
        self._dirty = True

    def _rebuild(self) -> None:
        by_storage: _Entries = {}
        parent: dict[int, tuple[weakref.ref[torch.nn.Module], str]] = {}
        for m in list(self._modules):
            ref = weakref.ref(m)
            for tensors, is_param in ((m._parameters, True), (m._buffers, False)):
                for local, p in tensors.items():
                    key = storage_key(p) if p is not None else None
                    if p is not None and key is not None:
                        start, end = byte_range(p)
                        by_storage.setdefault(key, []).append((start, end, ref, local, is_param))
            for child_name, child in m._modules.items():
                if child is not None and id(child) not in parent:
                    parent[id(child)] = (ref, child_name)
        self._by_storage, self._parent = by_storage, parent
        self._dirty = False

    def owner(self, t: torch.Tensor) -> Optional[tuple[torch.nn.Module, str, bool]]:
        """(module, local name, is parameter) of the parameter or buffer sharing ``t``'s
        bytes, or None."""
        key = storage_key(t)
        if key is None:
            return None
        with self._lock:
            if not self._seeded:
                self._seed()
            if self._dirty:
                self._rebuild()
            entries = self._by_storage.get(key, ())
            if not entries and isinstance(t, torch.nn.Parameter):
                self._rebuild()  # a parameter we do not know: its storage was replaced
                entries = self._by_storage.get(key, ())
        start, end = byte_range(t)
        found = None
        for p_start, p_end, ref, local, is_param in entries:
            m = ref()
            if m is not None and p_start < end and start < p_end:
                if type(m).__name__ != "GraphModule":
                    return m, local, is_param
                # torch.compile's graph modules hold the user's parameters under generated
                # names (`self___param_groups_0__params___0`): the user's module names them
                found = found or (m, local, is_param)
        return found

    def path_to(self, module: torch.nn.Module) -> list[str]:
        """Child names from the root down to ``module``, and the root."""
        path = []
        seen = set()
        m = module
        while id(m) in self._parent and id(m) not in seen:
            seen.add(id(m))
            ref, child_name = self._parent[id(m)]
            up = ref()
            if up is None or child_name not in up._modules or up._modules[child_name] is not m:
                break  # a stale entry (that parent is gone or no longer holds it)
            m = up
            path.append(child_name)
        path.reverse()
        return [_root_name(m), *path]


index = ModuleIndex()


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
    owner = index.owner(t)
    if owner is None:
        return None, False
    module, local, is_param = owner
    return ".".join([*index.path_to(module), local]), is_param
