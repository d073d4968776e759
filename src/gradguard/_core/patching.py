"""The one mechanism by which gradguard replaces attributes of torch.

Every patched entry point -- in-place Tensor methods and ``torch.*`` functions, the
``Tensor.data`` property, ``autograd.Function.apply``, ``saved_tensors_hooks.__enter__`` --
goes through `Patches.replace`, which remembers the attribute exactly as it was found in
the owner's own ``__dict__`` (or that it was absent there and inherited), and
`Patches.restore`, which puts back exactly that. `around` builds a replacement for a
callable attribute of any kind PyTorch uses (a Python function, a ``classmethod``, a
``staticmethod``, or a C descriptor such as torch 2.14's ``Function.apply``), so no patch
depends on how a given torch version happens to define the attribute.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

_MISSING = object()

# around(call, receiver, args, kwargs): ``call(*args, **kwargs)`` runs the original
# attribute, bound as Python would have bound it; ``receiver`` is the instance or class it
# was looked up on (None for a staticmethod).
Around = Callable[[Callable[..., Any], Any, tuple, dict], Any]


class Patches:
    """A set of replaced attributes that can be put back exactly, in reverse order."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []  # (owner, name, own value or _MISSING)

    def replace(self, owner: Any, name: str, replacement: Any) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, replacement)

    def restore(self) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            if original is _MISSING:
                try:
                    delattr(owner, name)  # it was inherited: uncover the inherited one
                except AttributeError:
                    pass
            else:
                setattr(owner, name, original)

    def __bool__(self) -> bool:
        return bool(self._saved)

    def __len__(self) -> int:
        return len(self._saved)


def found(owner: Any, name: str) -> Any:
    """The attribute as the class defines it (no descriptor invoked): its own, or the
    inherited one."""
    return inspect.getattr_static(owner, name)


def around(owner: Any, name: str, hook: Around) -> Any:
    """A replacement for the callable attribute ``owner.name`` that runs ``hook`` around
    each call, whatever kind of attribute the original is."""
    original = found(owner, name)
    if isinstance(original, classmethod):
        func = original.__func__

        @functools.wraps(func)
        def class_call(cls: Any, *args: Any, **kwargs: Any) -> Any:
            return hook(func.__get__(cls, type(cls)), cls, args, kwargs)

        return classmethod(class_call)
    if isinstance(original, staticmethod):
        target = original.__func__

        @functools.wraps(target)
        def static_call(*args: Any, **kwargs: Any) -> Any:
            return hook(target, None, args, kwargs)

        return staticmethod(static_call)
    if inspect.isfunction(original):
        plain = original

        @functools.wraps(plain)
        def method_call(self: Any, *args: Any, **kwargs: Any) -> Any:
            return hook(plain.__get__(self, type(self)), self, args, kwargs)

        return method_call
    return _AroundDescriptor(original, hook)


class _AroundDescriptor:
    """Wraps a C-level descriptor (e.g. a ``classmethod_descriptor``): binds it as the
    original would bind, then runs the hook around the call."""

    def __init__(self, original: Any, hook: Around) -> None:
        self._original = original
        self._hook = hook
        self.__wrapped__ = original
        self.__doc__ = getattr(original, "__doc__", None)
        self.__name__ = getattr(original, "__name__", "")

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        bound = self._original.__get__(obj, objtype)
        hook = self._hook
        receiver = obj if obj is not None else objtype

        @functools.wraps(bound)
        def call(*args: Any, **kwargs: Any) -> Any:
            return hook(bound, receiver, args, kwargs)

        return call
