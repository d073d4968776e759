"""No crash on any tensor PyTorch has: under detect(), a program that saves a tensor of
each kind and makes an intercepted in-place write runs like stock PyTorch (same result,
or the same exception type). And patches left installed, inactive, after the last session
are indistinguishable from the originals."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import gradguard


def _outcome(program):
    try:
        return ("ok", program())
    except Exception as exc:  # noqa: BLE001 (the type is what is compared)
        return ("raised", type(exc))


def _same_as_stock(program):
    stock = _outcome(program)
    with gradguard.detect(on_conflict="record"):
        ours = _outcome(program)
    if stock[0] == "raised":
        assert ours[0] == "raised" and issubclass(ours[1], stock[1]), (stock, ours)
    else:
        assert ours == stock, (stock, ours)


def _nested():
    nt = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(3, 3) * 2],
                                    layout=torch.jagged, requires_grad=True)
    y = nt.sin()
    other = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(3, 3)], layout=torch.jagged)
    other.mul_(2.0)
    y.values().sum().backward()
    return round(nt.grad.values().sum().item(), 6)


def _sparse_coo():
    s = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse().requires_grad_()
    y = torch.sparse.sum(s * s)
    other = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).to_sparse()
    other.mul_(2.0)
    y.backward()
    return round(s.grad.to_dense().sum().item(), 6)


def _sparse_csr():
    c = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse_csr()
    w = torch.ones(2, 2, requires_grad=True)
    y = torch.mm(c, w)  # saves the CSR matrix for w's gradient
    other = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).to_sparse_csr()
    other.mul_(2.0)
    y.sum().backward()
    return w.grad.tolist()


def _quantized():
    x = torch.linspace(-1, 1, 4, requires_grad=True)
    q = torch.quantize_per_tensor(torch.linspace(0, 1, 4), 0.1, 0, torch.quint8)
    y = (x * q.dequantize()).sum()
    q.copy_(torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.quint8))
    y.backward()
    return [round(v, 6) for v in x.grad.tolist()]


def _meta():
    x = torch.empty(3, 4, device="meta", requires_grad=True)
    y = x.sin()
    other = torch.empty(3, 4, device="meta")
    other.add_(1.0)
    y.sum().backward()
    return tuple(x.grad.shape), str(x.grad.device)


def _fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(3, 4, requires_grad=True)
        y = x.sin()
        other = torch.empty(3, 4)
        other.add_(1.0)
        y.sum().backward()
        return tuple(x.grad.shape)


def _complex():
    x = torch.tensor([1 + 2j, 3 - 1j], requires_grad=True)
    y = (x * x).abs().sum()
    other = torch.zeros(2, dtype=torch.cfloat)
    other.add_(1j)
    y.backward()
    return [round(v, 5) for v in torch.view_as_real(x.grad).flatten().tolist()]


def _bool():
    cond = torch.tensor([True, False, True])
    x = torch.arange(3.0, requires_grad=True)
    y = torch.where(cond, x * x, x).sum()
    flags = torch.tensor([False, False])
    flags.logical_not_()
    y.backward()
    return x.grad.tolist()


def _bool_saved_and_written():
    cond = torch.tensor([True, False, True])
    x = torch.arange(3.0, requires_grad=True)
    y = torch.where(cond, x * x, x).sum()
    cond.logical_not_()  # where saved its condition: stock rejects the backward
    y.backward()
    return x.grad.tolist()


class _Plain(torch.Tensor):
    pass


def _subclass():
    x = torch.arange(3.0).as_subclass(_Plain).requires_grad_()
    y = x.sin()
    other = torch.zeros(3).as_subclass(_Plain)
    other.add_(1.0)
    y.sum().backward()
    return type(x.grad).__name__, [round(v, 6) for v in x.grad.tolist()]


def _wrapper_subclass_without_storage():
    from torch.testing._internal.two_tensor import TwoTensor

    x = TwoTensor(torch.arange(3.0), torch.arange(3.0) * 2).requires_grad_()
    y = x.sin()
    other = TwoTensor(torch.zeros(3), torch.zeros(3))
    other.add_(1.0)
    y.sum().backward()
    return [round(v, 6) for v in x.grad.a.tolist()], [round(v, 6) for v in x.grad.b.tolist()]


@torch.jit.script
def _scripted(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * x


def _jit_fork():
    x = torch.arange(4.0, requires_grad=True)
    fut = torch.jit._fork(_scripted, x)
    y = torch.jit._wait(fut)
    other = torch.zeros(4)
    other.add_(1.0)
    y.sum().backward()
    return [round(v, 6) for v in x.grad.tolist()]


KINDS = {
    "nested": _nested, "sparse_coo": _sparse_coo, "sparse_csr": _sparse_csr,
    "quantized": _quantized, "meta": _meta, "fake": _fake, "complex": _complex,
    "bool": _bool, "bool_saved_and_written": _bool_saved_and_written,
    "subclass": _subclass, "wrapper_subclass_without_storage": _wrapper_subclass_without_storage,
    "jit_fork": _jit_fork,
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_runs_like_stock(kind):
    _same_as_stock(KINDS[kind])


# The write lands in the saved tensor itself, through `.data` (silently wrong in stock, and
# a conflict for gradguard to describe): the result must still be stock's.
def _data_write(make, grad_of):
    def program():
        x = make()
        y = x.sin() if not x.is_sparse else torch.sparse.sum(x * x)
        x.data.mul_(2.0)
        y = y.values() if y.is_nested else y
        (y.abs() if y.is_complex() else y).sum().backward()
        return grad_of(x.grad)
    return program


INTO_SAVED = {
    "nested": _data_write(
        lambda: torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(3, 3)],
                                           layout=torch.jagged, requires_grad=True),
        lambda g: round(g.values().sum().item(), 5)),
    "sparse_coo": _data_write(
        lambda: torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse().requires_grad_(),
        lambda g: round(g.to_dense().sum().item(), 5)),
    "meta": _data_write(
        lambda: torch.empty(3, device="meta", requires_grad=True), lambda g: tuple(g.shape)),
    "complex": _data_write(
        lambda: torch.tensor([1 + 2j, 3 - 1j], requires_grad=True),
        lambda g: [round(v, 5) for v in torch.view_as_real(g).flatten().tolist()]),
    "subclass": _data_write(
        lambda: torch.arange(3.0).as_subclass(_Plain).requires_grad_(),
        lambda g: [round(v, 5) for v in g.tolist()]),
    "wrapper_subclass_without_storage": _data_write(
        lambda: __import__("torch.testing._internal.two_tensor", fromlist=["TwoTensor"])
        .TwoTensor(torch.arange(3.0), torch.arange(3.0)).requires_grad_(),
        lambda g: [round(v, 5) for v in g.a.tolist()]),
}


@pytest.mark.parametrize("kind", list(INTO_SAVED))
def test_data_write_into_the_saved_tensor_runs_like_stock(kind):
    _same_as_stock(INTO_SAVED[kind])


_PATCH_PROBE = textwrap.dedent("""
    import inspect, json, sys
    import torch

    NAMES = [("Tensor", "add_"), ("Tensor", "copy_"), ("Tensor", "__iadd__"),
             ("Tensor", "zero_"), ("torch", "relu_"), ("torch", "add"),
             ("torch", "_foreach_add_")]

    def describe():
        out = {}
        for owner, name in NAMES:
            f = getattr(torch.Tensor if owner == "Tensor" else torch, name)
            try:
                sig = str(inspect.signature(f))
            except Exception as exc:
                sig = "raises " + type(exc).__name__
            out[owner + "." + name] = [sig, f.__doc__, f.__name__]
        x = torch.ones(2)
        try:
            del x.data
            out["del x.data"] = "no error"
        except Exception as exc:
            out["del x.data"] = type(exc).__name__
        return out

    before = describe()
    import gradguard
    with gradguard.detect(on_conflict="record"):
        pass
    after = describe()
    json.dump({"before": before, "after": after}, sys.stdout)
""")


def test_inactive_patches_are_indistinguishable_from_stock():
    proc = subprocess.run([sys.executable, "-c", _PATCH_PROBE], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    for key, stock in seen["before"].items():
        assert seen["after"][key] == stock, (key, stock, seen["after"][key])


def test_nested_tensor_written_after_save_is_still_rejected():
    """A nested tensor has no sizes to describe, and no byte ranges: whatever gradguard's
    report can say, the in-place error stock PyTorch raises must still be raised."""
    def program():
        nt = torch.nested.nested_tensor([torch.rand(2), torch.rand(2)], requires_grad=True)
        x = nt.clone()
        res = x.sum(-1, keepdim=True)  # saves x
        x.add_(x)  # moves its version
        res.backward(torch.nested.nested_tensor([torch.rand(1), torch.rand(1)]))

    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        program()
    with gradguard.detect(on_conflict="record"):
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            program()
