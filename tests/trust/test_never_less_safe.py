"""Installing saved-tensor hooks switches off checks in PyTorch's `SavedVariable::unpack`
(torch/csrc/autograd/saved_variable.cpp): with hooks, the version-counter check is skipped
and the in-place-detach check sees the grad_fn recorded at save time. gradguard must
never be less safe than stock: every program stock PyTorch rejects there is rejected under
detect(), with the same exception type and the same sentence.

The checks `unpack` performs:
  1. data freed and no hooks -> ERR_BACKWARD_TWICE ("Trying to backward through the graph a
     second time ..."); hooks do not disable it (reset_data drops the hooks too).
  2. non-leaf whose grad_fn is gone -> "Trying to use a saved tensor that has been detached
     in-place, i.e. with .detach_()."; with hooks grad_fn is the one saved at pack time, so
     the check never fires.
  3. saved version != current version -> "one of the variables needed for gradient
     computation has been modified by an inplace operation: ..."; skipped with hooks.
"""
import pytest
import torch

import gradguard

MODES = ["record", "raise"]


def _sentence(exc: BaseException) -> str:
    """Stock's message up to its hint (the hint depends on anomaly mode)."""
    return str(exc).split(" Hint:")[0].strip()


def _expect_same_as_stock(program) -> None:
    with pytest.raises(Exception) as stock:
        program()
    for mode in MODES:
        with gradguard.detect(on_conflict=mode):
            with pytest.raises(Exception) as ours:
                program()
        assert isinstance(ours.value, type(stock.value)), (mode, type(ours.value), stock.value)
        assert _sentence(stock.value) in str(ours.value), (mode, str(ours.value)[:400])


def test_detached_in_place_input():
    def program():
        a = torch.tensor(1.0, requires_grad=True).clone()
        b = a.sin()
        a.detach_()
        b.backward()

    _expect_same_as_stock(program)


def _outcome(program):
    try:
        program()
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return type(exc), _sentence(exc)
    return None


def test_detached_in_place_input_of_a_custom_function():
    """Stock PyTorch 2.13 does not check a custom Function's saved input for .detach_()
    (the check is on built-in nodes): gradguard must not raise where stock does not."""
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

    def program():
        a = torch.randn(3, requires_grad=True) * 1.0
        b = Square.apply(a)
        a.detach_()
        b.sum().backward()

    stock = _outcome(program)
    for mode in MODES:
        with gradguard.detect(on_conflict=mode):
            assert _outcome(program) == stock, mode


def test_version_check_saved_input():
    def program():
        a = torch.randn(3, requires_grad=True).clone()
        b = a.sin()
        a.add_(1.0)
        b.sum().backward()

    _expect_same_as_stock(program)


def test_version_check_saved_output():
    def program():
        a = torch.randn(3, requires_grad=True)
        b = a.exp()
        b.add_(1.0)
        b.sum().backward()

    _expect_same_as_stock(program)


def test_version_check_saved_leaf_written_under_no_grad():
    def program():
        w = torch.randn(3, requires_grad=True)
        y = (w * w).sum()
        with torch.no_grad():
            w.add_(1.0)
        y.backward()

    _expect_same_as_stock(program)


def test_backward_twice():
    def program():
        a = torch.randn(3, requires_grad=True)
        b = a.sin().sum()
        b.backward()
        b.backward()

    _expect_same_as_stock(program)


def test_saved_tensor_accessed_after_it_was_freed():
    def program():
        a = torch.randn(3, requires_grad=True)
        y = a.sin()
        y.sum().backward()
        return y.grad_fn._saved_self

    _expect_same_as_stock(program)
