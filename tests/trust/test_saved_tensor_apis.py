"""detect() must coexist with PyTorch's other users of saved-tensor hooks: each works as
in stock PyTorch, and what gradguard cannot check there is a coverage gap naming the line."""
import inspect

import pytest
import torch
from helpers import line_of

import gradguard


def _here() -> str:
    """``file:line`` of the caller's line."""
    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _gap_names(session, where: str) -> None:
    assert any(where in gap for gap in session.coverage_gaps), (where, session.coverage_gaps)


def _f(x):
    return (x.sin() * x).sum()


@pytest.mark.parametrize("transform", ["grad", "vjp", "jacrev", "hessian"])
def test_torch_func_transforms_work_inside_detect(transform):
    x = torch.randn(4, dtype=torch.double)

    def call():
        if transform == "grad":
            return torch.func.grad(_f)(x)  # CALL-grad
        if transform == "vjp":
            out, fn = torch.func.vjp(lambda t: t.sin() * t, x)  # CALL-vjp
            return fn(torch.ones_like(out))[0]
        if transform == "jacrev":
            return torch.func.jacrev(lambda t: t.sin() * t)(x)  # CALL-jacrev
        return torch.func.hessian(_f)(x)  # CALL-hessian

    expected = call()
    with gradguard.detect(on_conflict="raise") as session:
        result = call()
    assert torch.equal(result, expected)
    # the gap names the line that called the transform
    _gap_names(session, f"{__file__}:{line_of('CALL-' + transform)}")


def test_disable_saved_tensors_hooks_works_inside_detect():
    ran = []
    with gradguard.detect(on_conflict="raise") as session:
        with torch.autograd.graph.disable_saved_tensors_hooks("msg"):  # ENTER-disable
            a = torch.ones(3, requires_grad=True)
            a.sin().sum().backward()
            ran.append(a.grad.clone())
    assert ran and torch.equal(ran[0], torch.ones(3).cos())
    _gap_names(session, f"{__file__}:{line_of('ENTER-disable')}")


def test_register_hooks_on_a_raw_saved_tensor_is_explained_inside_detect():
    """PyTorch allows one pair of hooks per saved tensor, and inside detect() every saved
    tensor carries gradguard's: PyTorch refuses a second pair, as it does under any default
    hooks. gradguard says why, at the line, and records the coverage gap."""
    def pack(t):
        return t

    def unpack(t):
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):  # stock, any default hooks
        y = torch.randn(3, requires_grad=True).sin()
        with pytest.raises(RuntimeError, match="already been set"):
            y.grad_fn._raw_saved_self.register_hooks(pack, unpack)
    with gradguard.detect(on_conflict="raise") as session:
        a = torch.randn(3, requires_grad=True)
        y = a.sin()
        with pytest.raises(RuntimeError, match="already been set") as info:
            y.grad_fn._raw_saved_self.register_hooks(pack, unpack)  # REGISTER
        y.sum().backward()  # the session goes on checking
    assert any("register these hooks outside" in note for note in info.value.__notes__)
    _gap_names(session, f"{__file__}:{line_of('REGISTER')}")
    assert torch.equal(a.grad, a.detach().cos())


def test_saved_tensor_identity_is_what_any_hooks_give():
    """Stock PyTorch hands back the very tensor it saved only when no saved-tensor hooks
    are set; under any hooks (identity hooks included) it wraps it anew. gradguard's unpack
    returns the saved tensor itself, so the result is what any hooks give: the same
    storage and values, not the same object."""
    a = torch.randn(3, requires_grad=True)
    assert a.sin().grad_fn._saved_self is a  # stock, no hooks
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert a.sin().grad_fn._saved_self is not a  # stock, identity hooks
    with gradguard.detect(on_conflict="raise"):
        b = torch.randn(3, requires_grad=True)
        saved = b.sin().grad_fn._saved_self
    assert saved.untyped_storage()._cdata == b.untyped_storage()._cdata
    assert torch.equal(saved, b)
