"""One patching mechanism for every patched entry point: it wraps the attribute as found
(a function, a classmethod, a staticmethod, a C descriptor such as torch 2.14's
``Function.apply``) and restores exactly what was there, own or inherited. (Inactive patches against a fresh
process's stock behaviour: tests/trust/test_tensor_kinds.py.)"""
from __future__ import annotations

import inspect

import torch

import gradguard
from gradguard._core import intercept, patching
from gradguard._core.runtime import runtime, unpatch_all


class Base:
    def method(self, x):
        return ("method", self, x)

    @classmethod
    def klass(cls, x):
        return ("klass", cls, x)

    @staticmethod
    def static(x):
        return ("static", x)


class Child(Base):
    pass


def _recording(calls):
    def hook(call, receiver, args, kwargs):
        calls.append(receiver)
        return call(*args, **kwargs)
    return hook


def test_around_wraps_every_kind_of_attribute_and_binds_as_the_original():
    calls: list = []
    patches = patching.Patches()
    for name in ("method", "klass", "static"):
        patches.replace(Child, name, patching.around(Child, name, _recording(calls)))
    child = Child()
    assert child.method(1) == ("method", child, 1)
    assert Child.klass(2) == ("klass", Child, 2)
    assert Child.static(3) == ("static", 3)
    assert calls == [child, Child, None]
    patches.restore()
    assert "method" not in Child.__dict__ and "klass" not in Child.__dict__  # inherited again
    assert Child.method is Base.method


def test_around_wraps_a_c_level_classmethod_descriptor():
    """torch 2.14 defines Function.apply as _C._FunctionBase's classmethod_descriptor."""
    calls: list = []
    descriptor = dict.__dict__["fromkeys"]  # a C classmethod_descriptor
    wrapped = patching._AroundDescriptor(descriptor, _recording(calls))
    assert wrapped.__get__(None, dict)(["a"], 0) == {"a": 0}
    assert calls == [dict]


def test_restore_puts_back_exactly_the_objects_found():
    unpatch_all()  # patches stay installed, inactive, after earlier tests' sessions
    before = {name: torch.Tensor.__dict__.get(name) for name in ("add_", "__iadd__", "data")}
    apply_before = torch.autograd.Function.__dict__.get("apply")
    with gradguard.detect(on_conflict="record"):
        assert torch.Tensor.__dict__["add_"] is not before["add_"]
    unpatch_all()
    try:
        for name, value in before.items():
            assert torch.Tensor.__dict__.get(name) is value, name
        assert torch.autograd.Function.__dict__.get("apply") is apply_before
        assert not intercept.installed()
    finally:
        assert not runtime.sessions


def test_patched_methods_look_like_the_originals():
    unpatch_all()
    original = torch.Tensor.add_
    with gradguard.detect(on_conflict="record"):
        patched = torch.Tensor.add_
        assert patched is not original
        assert patched.__name__ == original.__name__ and patched.__doc__ == original.__doc__
        assert patched.__wrapped__ is original
    # inactive patches, left installed, still look the same
    assert torch.Tensor.add_.__name__ == "add_"


def test_signature_of_a_wrapped_write_is_the_originals():
    original = inspect.signature(torch.Tensor.__setitem__) if hasattr(
        torch.Tensor.__setitem__, "__text_signature__") else None
    with gradguard.detect(on_conflict="record"):
        if original is not None:
            assert inspect.signature(torch.Tensor.__setitem__) == original
        assert torch.Tensor.__setitem__.__wrapped__ is not None
