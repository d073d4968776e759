"""gradguard.readonly(): every write category stopped before the bytes change, the error
names the tensor and the writing line, nothing changes for programs that write nothing."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import gradguard
from gradguard._core.runtime import runtime

pytest_plugins = ["pytester"]


def _line_of(fn) -> int:
    return fn.__code__.co_firstlineno


def _expect_blocked(t, write, match=None):
    before = t.detach().clone()
    with pytest.raises(gradguard.ReadOnlyTensorError, match=match) as info:
        write()
    assert torch.equal(t.detach(), before), "bytes changed before the error"
    return info.value


W = torch.arange(16.0).reshape(4, 4)


@pytest.mark.parametrize("label,write", [
    ("self", lambda w: w.add_(1)),
    ("augmented", lambda w: w.__iadd__(1)),
    ("setitem", lambda w: w.__setitem__((0, 0), 5.0)),
    ("view", lambda w: w[1].mul_(2)),
    ("strided view", lambda w: w[:, 2].zero_()),
    ("reshape view", lambda w: w.view(-1)[3:5].fill_(1)),
    ("data", lambda w: w.data.sub_(1)),
    ("detach", lambda w: w.detach().zero_()),
    ("out=", lambda w: torch.add(w, 1, out=w)),
    ("out= through a view", lambda w: torch.mul(w[0], 2, out=w[0])),
    ("data assignment", lambda w: setattr(w, "data", torch.ones(4, 4))),
    ("set_", lambda w: w.set_(torch.ones(4, 4))),
    ("copy_", lambda w: w.copy_(torch.ones(4, 4))),
    ("foreach", lambda w: torch._foreach_add_([w], 1.0)),
    ("storage resize", lambda w: w.untyped_storage().resize_(0)),
])
def test_every_write_category_is_stopped(label, write):
    w = W.clone()
    with gradguard.readonly(w, name="w") as ro:
        err = _expect_blocked(w, lambda: write(w))
        assert ro.writes_blocked == 1
    assert err.tensor == "w" and "read-only tensor 'w'" in str(err)
    assert err.where.startswith(f"{__file__}:")  # the lambda's line, in this file
    assert torch.equal(w, W)
    if label != "storage resize":  # (a storage resized to 0 cannot be read back)
        write(w)  # after the block the same write goes through
        assert not torch.equal(w, W)


def test_error_names_the_writing_line_and_is_a_runtime_error():
    w = torch.zeros(3)
    with gradguard.readonly(w, name="weights"):
        try:
            w[1:].add_(1)
            line = None
        except RuntimeError as exc:  # a RuntimeError too
            line = sys._getframe().f_lineno - 3
            err = exc
    assert line is not None and isinstance(err, gradguard.GradguardError)
    assert err.where == f"{__file__}:{line}"
    assert "w[1:].add_(1)" in str(err) and "Tensor.add_" in str(err) and err.op == "Tensor.add_"


def test_a_view_listed_guards_only_its_bytes_and_the_base_write_is_stopped():
    w = torch.zeros(4, 4)
    row = w[1]
    with gradguard.readonly(row, name="row"):
        w[0].add_(1)  # disjoint bytes: allowed
        w[2:].add_(1)
        _expect_blocked(row, lambda: w.add_(1))  # the base covers the row
        _expect_blocked(row, lambda: w[:, 0].add_(1))  # a column crosses it
    assert w[0].sum() == 4 and w[1].sum() == 0


def test_optimizer_step_on_readonly_parameters_is_stopped_and_names_the_parameter():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    before = [p.detach().clone() for p in model.parameters()]
    for opt in (torch.optim.SGD(model.parameters(), lr=0.1),
                torch.optim.Adam(model.parameters(), foreach=True),
                torch.optim.AdamW(model.parameters(), foreach=False)):
        with gradguard.readonly(*model.parameters()):
            model(torch.randn(2, 4)).sum().backward()
            with pytest.raises(gradguard.ReadOnlyTensorError) as info:
                opt.step()
            opt.zero_grad()  # .grad is not the parameter: allowed
        assert info.value.tensor == "model.0.weight"
        assert "opt.step()" in str(info.value)
        for p, b in zip(model.parameters(), before):
            assert torch.equal(p, b)


def test_a_module_argument_guards_parameters_and_buffers():
    bn = torch.nn.BatchNorm1d(3)
    with gradguard.readonly(bn):
        _expect_blocked(bn.running_mean, lambda: bn.running_mean.fill_(1), match="running_mean")


def test_no_writes_gives_bit_identical_training():
    def train(guard):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        x = torch.randn(32, 8)
        frozen = model[0]
        for p in frozen.parameters():
            p.requires_grad_(False)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for _ in range(3):
            with (gradguard.readonly(frozen) if guard else torch.enable_grad()):
                loss = torch.relu_(model(x)).pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
        return [p.detach().clone() for p in model.parameters()], loss.item()

    plain, guarded = train(False), train(True)
    assert plain[1] == guarded[1]
    assert all(torch.equal(a, b) for a, b in zip(plain[0], guarded[0]))


def test_checksum_catches_writes_outside_pytorch_at_exit():
    w = torch.zeros(3)
    ro = gradguard.readonly(w, name="buf", checksum=True)
    w.numpy()[0] = 7.0  # numpy writes the bytes directly: no intercepted write
    with pytest.raises(gradguard.ReadOnlyTensorError, match="'buf' changed.*checksum") as info:
        ro.release()
    assert info.value.where is None
    assert not ro.active
    # without a change, no error
    with gradguard.readonly(w, checksum=True):
        np.asarray(w.numpy()).sum()


def test_one_call_form_and_release():
    w = torch.zeros(2)
    ro = gradguard.readonly(w)
    assert ro.active and runtime.watching
    _expect_blocked(w, lambda: w.add_(1))
    ro.release()
    assert not ro.active and not runtime.watching
    w.add_(1)
    ro.release()  # twice is fine
    assert w.tolist() == [1.0, 1.0]


def test_readonly_inside_detect_keeps_detect_working():
    w = torch.ones(3, requires_grad=True)
    frozen = torch.zeros(3)
    with gradguard.detect(on_conflict="record") as det:
        with gradguard.readonly(frozen):
            y = w.exp()
            y.add_(1)  # a conflict: exp saved its output
            _expect_blocked(frozen, lambda: frozen.add_(1))
        with pytest.raises(RuntimeError):  # PyTorch's own error, explained by detect
            y.sum().backward()
    assert len(det.conflicts) == 1


def test_bad_arguments():
    with pytest.raises(gradguard.UsageError):
        gradguard.readonly("not a tensor")
    with pytest.raises(gradguard.UsageError):
        gradguard.readonly(torch.zeros(1), name=3)


def test_unlisted_tensors_cost_no_lookup_when_nothing_is_watched():
    w = torch.zeros(2)
    with gradguard.readonly(w):
        assert runtime.watching
    assert not runtime.watching and not runtime._watches


def test_error_class_in_tree():
    assert issubclass(gradguard.ReadOnlyTensorError, gradguard.GradguardError)
    assert issubclass(gradguard.ReadOnlyTensorError, RuntimeError)
    assert gradguard.ReadOnlyTensorError.__module__ == "gradguard"
    assert gradguard.readonly.__module__ == "gradguard"


def test_pytest_marker(pytester):
    pytester.makepyfile(test_frozen="""
        import pytest, torch

        @pytest.fixture
        def model():
            return torch.nn.Linear(3, 2)

        @pytest.fixture
        def table():
            return torch.zeros(4)

        @pytest.mark.gradguard_readonly("model")
        def test_writes_weight(model):
            with torch.no_grad():
                model.weight.mul_(0.5)

        @pytest.mark.gradguard_readonly("model.bias", "table")
        def test_reads_only(model, table):
            model(torch.randn(1, 3)).sum().backward()
            model.weight.data.add_(1)  # not listed: fine

        @pytest.mark.gradguard_readonly("table")
        def test_writes_table(table):
            table[2] = 1.0

        @pytest.mark.gradguard_readonly("missing")
        def test_bad(table):
            pass
    """)
    result = pytester.runpytest_inprocess("-q")
    result.assert_outcomes(passed=1, failed=3)
    out = result.stdout.str()
    assert "ReadOnlyTensorError: write to read-only tensor 'model.weight'" in out
    assert "model.weight.mul_(0.5)" in out
    assert "read-only tensor 'table'" in out
    assert "does not request a fixture 'missing'" in out
