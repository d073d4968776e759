"""The core's watched storages (`Runtime.watch`, `watch_all`), neutral: a session is told
of writes overlapping what it watches, before they happen, and may stop them; a session
that does not save (`Session.saves = False`) installs no hooks and is never innermost."""
from __future__ import annotations

import pytest
import torch

import gradguard
from gradguard._core.runtime import runtime
from gradguard._core.session import Session
from gradguard.errors import GradguardError


class Watcher(Session):
    saves = False

    def __init__(self, tensor=None, stop=False):
        super().__init__()
        self.tensor, self.stop, self.heard, self.entry = tensor, stop, [], None

    def on_enter(self):
        if self.tensor is None:
            runtime.watch_all(self)
        else:
            self.entry = runtime.watch(self.tensor, self, "payload")

    def on_exit(self):
        if self.tensor is None:
            runtime.unwatch_all(self)
        else:
            runtime.unwatch(self.entry)

    def before_watched_write(self, op, target, whole, payloads):
        self.heard.append((op, tuple(payloads)))
        if self.stop:
            raise GradguardError("stopped")


def test_watch_tells_overlapping_writes_only_and_can_stop_them():
    base = torch.zeros(4, 4)
    with Watcher(base[1]) as w:
        base[0].add_(1)
        base[1, 2:].mul_(2)
        torch.add(base, 1, out=base)
    assert w.heard == [("Tensor.mul_", ("payload",)), ("torch.add(out=)", ("payload",))]
    assert not runtime.watching and not runtime._watches
    before = base.clone()
    with Watcher(base, stop=True):
        with pytest.raises(GradguardError):
            base.detach().zero_()
    assert torch.equal(base, before)  # stopped before the bytes changed


def test_watch_all_hears_every_write_and_no_hooks_are_installed():
    top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    with Watcher() as w:
        assert torch._C._autograd._top_saved_tensors_default_hooks(False) == top
        assert runtime.innermost() is None  # transparent
        torch.zeros(2).add_(1)
        torch.ones(3).relu_()
    assert [op for op, _ in w.heard] == ["Tensor.add_", "Tensor.relu_"]


def test_transparent_session_inside_detect_keeps_detect_innermost():
    with gradguard.detect(on_conflict="record") as det:
        with Watcher():
            assert runtime.innermost() is det


def test_readonly_checksum_catches_batchnorm_running_stats_written_in_cpp():
    bn = torch.nn.BatchNorm1d(3).train()
    ro = gradguard.readonly(bn.running_mean, name="running_mean", checksum=True)
    bn(torch.randn(8, 3))  # the running statistics are updated by the C++ kernel
    with pytest.raises(gradguard.ReadOnlyTensorError, match="'running_mean' changed"):
        ro.release()
