"""BatchNorm's running statistics are written from C++ (no Python entry point to patch,
no version bump): gradguard must neither cry wolf on ordinary training nor miss the case
where a train-mode forward overwrites statistics an eval-mode graph saved."""
import copy
import inspect

import pytest
import torch
from torch import nn

import gradguard


@pytest.fixture(autouse=True)
def _one_thread():
    # small convolutions: threads only contend (2.7 s instead of 0.03 s on a busy machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Block(nn.Module):
    """A ResNet basic block."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


def _train(steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(2, 4, 4, 4, generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_train_mode_batchnorm_with_checksum_is_clean_and_identical():
    reference = _train()
    with gradguard.detect(on_conflict="record", checksum=True) as session:
        losses = _train()
    assert session.conflicts == [], session.report()
    assert losses == reference


def test_train_forward_overwrites_stats_an_eval_graph_saved():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    with torch.no_grad():  # running stats away from their defaults, so the change shows
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    ref_bn = copy.deepcopy(bn)
    x = torch.randn(5, 3, requires_grad=True)
    x2 = torch.randn(8, 3) * 3 + 2

    ref_x = x.detach().clone().requires_grad_()
    ref_bn.eval()
    ref_bn(ref_x).square().sum().backward()

    # stock PyTorch: the eval graph's backward silently uses the statistics the train-mode
    # forward wrote in between
    stock_x = x.detach().clone().requires_grad_()
    stock_bn = copy.deepcopy(bn)
    stock_bn.eval()
    y = stock_bn(stock_x)
    stock_bn.train()
    stock_bn(x2)
    y.square().sum().backward()
    assert not torch.allclose(stock_x.grad, ref_x.grad)

    with gradguard.detect(on_conflict="record") as session:
        bn.eval()
        y = bn(x)
        bn.train()
        bn(x2)  # train-forward
        y.square().sum().backward()
    assert session.conflicts, "the overwritten running statistics were not reported"
    lines = inspect.getsourcelines(test_train_forward_overwrites_stats_an_eval_graph_saved)
    train_line = lines[1] + next(i for i, text in enumerate(lines[0])
                                 if text.rstrip().endswith("# train-forward"))
    conflict = session.conflicts[0]
    assert conflict.write is not None and conflict.write.site.line == train_line, session.report()
