"""ctx attributes: the report names the `ctx.<attr> = ...` line inside the Function's
forward (the line to change), above the `.apply(...)` call, and the FIX rewrites it."""
from __future__ import annotations

import torch
from helpers import line_of

import gradguard

HERE = __file__


class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale  # CTX
        return x * scale

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class Pair(torch.autograd.Function):
    @staticmethod
    def forward(context, x, a, b):
        context.pair = (a, b)  # CTX-PAIR
        return x * a * b

    @staticmethod
    def backward(context, grad):
        a, b = context.pair
        return grad * a * b, None, None


def test_the_ctx_assignment_line_is_named_in_saved_and_fix():
    x = torch.randn(3, requires_grad=True)
    s = torch.full((3,), 2.0)
    with gradguard.detect(on_conflict="record") as session:
        y = Scale.apply(x, s)  # APPLY
        s.mul_(10)  # WRITE
        y.sum().backward()
    (c,) = session.conflicts
    report = session.report()
    assert (
        "SAVED by Scale.forward (ctx.scale) for backward node ScaleBackward\n"
        f"    kept on ctx at {HERE}:{line_of('CTX')} in Scale.forward\n"
        "         ctx.scale = scale  # CTX\n"
        f"    #0 {HERE}:{line_of('APPLY')} in "
        "test_the_ctx_assignment_line_is_named_in_saved_and_fix\n"
        "         y = Scale.apply(x, s)  # APPLY\n") in report
    assert c.fix == ("write `s = s.mul(10)` instead of `s.mul_(10)`; and in `Scale.forward`, "
                     "replace `ctx.scale = scale` with `ctx.save_for_backward(scale)` (read it "
                     "back from `ctx.saved_tensors` in backward) so PyTorch checks it")
    assert report.endswith(
        f"SUMMARY: gradguard: ctx-attribute-mutated {HERE}:{line_of('WRITE')} in "
        "test_the_ctx_assignment_line_is_named_in_saved_and_fix (Tensor.mul_)")


def test_a_tuple_attribute_names_its_line_with_the_general_fix():
    x = torch.randn(3, requires_grad=True)
    a, b = torch.full((3,), 2.0), torch.full((3,), 3.0)
    with gradguard.detect(on_conflict="record") as session:
        y = Pair.apply(x, a, b)  # APPLY-PAIR
        b.add_(1)  # WRITE-PAIR
        y.sum().backward()
    (c,) = session.conflicts
    assert (c.saved.assigned.line, c.saved.assigned.function) == (line_of("CTX-PAIR"),
                                                                  "Pair.forward")
    assert (c.saved.site.line, c.saved.site.function) == (
        line_of("APPLY-PAIR"), "test_a_tuple_attribute_names_its_line_with_the_general_fix")
    again = gradguard.Conflict.from_dict(c.to_dict())
    assert again.saved.assigned == c.saved.assigned
    assert c.to_dict()["saved"]["assigned"]["line"] == line_of("CTX-PAIR")
    assert c.fix == ("write `b = b.add(1)` instead of `b.add_(1)`; and in the Function, keep "
                     "tensors with `ctx.save_for_backward(...)` so PyTorch checks them")
