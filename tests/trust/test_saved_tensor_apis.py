"""detect() must coexist with PyTorch's other users of saved-tensor hooks: each works as
in stock PyTorch, and what gradguard cannot check there is a coverage gap naming the line."""
import inspect

import pytest
import torch

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
            return torch.func.grad(_f)(x)
        if transform == "vjp":
            out, fn = torch.func.vjp(lambda t: t.sin() * t, x)
            return fn(torch.ones_like(out))[0]
        if transform == "jacrev":
            return torch.func.jacrev(lambda t: t.sin() * t)(x)
        return torch.func.hessian(_f)(x)

    expected = call()
    with gradguard.detect(on_conflict="raise") as session:
        where = _here(); result = call()  # noqa: E702 (the gap must name this line)
    assert torch.equal(result, expected)
    _gap_names(session, where)


def test_disable_saved_tensors_hooks_works_inside_detect():
    ran = []
    with gradguard.detect(on_conflict="raise") as session:
        where = _here(); ctx = torch.autograd.graph.disable_saved_tensors_hooks("msg")  # noqa: E702
        with ctx:
            a = torch.ones(3, requires_grad=True)
            a.sin().sum().backward()
            ran.append(a.grad.clone())
    assert ran and torch.equal(ran[0], torch.ones(3).cos())
    _gap_names(session, where)


def test_register_hooks_on_a_raw_saved_tensor_works_inside_detect():
    calls = []

    def pack(t):
        calls.append("pack")
        return t

    def unpack(t):
        calls.append("unpack")
        return t

    with gradguard.detect(on_conflict="raise") as session:
        a = torch.randn(3, requires_grad=True)
        y = a.sin()
        where = _here(); y.grad_fn._raw_saved_self.register_hooks(pack, unpack)  # noqa: E702
        y.sum().backward()
    assert calls == ["pack", "unpack"]
    assert torch.equal(a.grad, a.detach().cos())
    _gap_names(session, where)


def test_saved_leaf_is_the_leaf_itself_as_in_stock():
    a = torch.randn(3, requires_grad=True)
    assert a.sin().grad_fn._saved_self is a  # stock PyTorch
    with gradguard.detect(on_conflict="raise"):
        b = torch.randn(3, requires_grad=True)
        y = b.sin()
        assert y.grad_fn._saved_self is b
