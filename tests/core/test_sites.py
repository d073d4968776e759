"""Save sites: `capture_save` reuses an earlier walk above its anchor frame when the callers
are the same, with the same result as a full walk, and holds no frame (so no tensor)."""
from __future__ import annotations

import gc
import weakref

import torch
from torch import nn

import gradguard
from gradguard._core import sites


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        return torch.tanh(self.norm(self.lin(x)))


class Hooked(nn.Module):
    """A torch module and a user module whose forward makes the same op at the same
    depth below the caller: the anchor must not be confused between them."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Dropout(0.5), Mine(), nn.Dropout(0.5), Mine()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Mine(nn.Module):
    def forward(self, x):
        return nn.functional.dropout(x, 0.5)


def gen(model, xs):
    for x in xs:  # a generator: its frame is resumed from its caller between saves
        yield model(x)


def _compare(run) -> int:
    seen = []

    def pack(t):
        seen.append((sites.capture(2, 4, sites.MAX_WALK), sites.capture_save(2, 4)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    for full, reused in seen:
        assert reused == full
    return len(seen)


def test_capture_save_equals_a_full_walk():
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block(), Hooked())
    x = torch.randn(3, 4, requires_grad=True)
    assert _compare(lambda: model(x).sum()) > 10
    xs = [torch.randn(3, 4, requires_grad=True) for _ in range(3)]
    assert _compare(lambda: [next(g) for g in [gen(model, xs)] for _ in xs]) > 30


def test_first_frame_outside_torch_is_the_same_with_and_without_the_path_shortcut():
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Hooked(), Block())
    x = torch.randn(3, 4, requires_grad=True)
    compared = []

    def pack(t):
        shortcut = sites._first_outside(2)  # from the remembered path where one applies
        remembered = dict(sites._paths)
        sites._paths.clear()
        walked = sites._first_outside(2)
        sites._paths.update(remembered)
        assert shortcut[0] is walked[0] and shortcut[1] == walked[1]
        compared.append(bool(remembered))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(3):  # Dropout's and Mine's dropout share the first frame's site
            model(x).sum()
    assert len(compared) > 20 and sum(compared) > 10


def test_save_lines_are_exact_under_the_reused_walk():
    model = Block()
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4, requires_grad=True)
    with gradguard.detect(on_conflict="record") as guard:
        h = model(x)  # tanh saves its output inside Block.forward
        y = h * w  # mul saves h here
        h.data.mul_(3)  # the write, unseen by PyTorch
        y.sum().backward()
    lines = sorted((c.saved.user_site.function, c.saved.user_site.source)
                   for c in guard.conflicts)
    assert lines == [("Block.forward", "return torch.tanh(self.norm(self.lin(x)))"),
                     ("test_save_lines_are_exact_under_the_reused_walk",
                      "y = h * w  # mul saves h here")]


def test_no_frame_is_held_after_backward_or_exit():
    model = Block()
    probe: list = []

    def forward_only():
        t = torch.randn(3, 4, requires_grad=True)
        probe.append(weakref.ref(t))
        return model(t)

    with gradguard.detect():
        out = forward_only()
        out.sum().backward()  # unpack drops the anchor
        del out
        gc.collect()
        assert probe[-1]() is None
        out = forward_only()  # no backward: session exit drops it
        del out
    gc.collect()
    assert probe[-1]() is None
