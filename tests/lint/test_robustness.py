"""Odd but valid code must lint without crashing and without spurious findings."""
from __future__ import annotations

import sys

import pytest

from gradguard.lint.engine import lint_source, resolve_selection

ODD = '''
import torch, torch.nn as nn
from torch.nn import functional as F
from . import sibling
from .utils import init as init_mod
global_t = torch.zeros(3)


async def agen(x):
    async with ctx() as (a, b):
        async for y in stream(x):
            yield y @ a


def everything(x, *args, w=None, **kw):
    global global_t
    global_t += 1
    if (n := len(args)) > 2:
        x = x[..., None, 1:-1:2]
    h, *rest = x.split(2)
    fn = lambda t=x: t.relu_()
    ys = [t.mul_(2) for t in args]
    d = {k: v @ v for k, v in kw.items()}
    try:
        x.add_(1)
    except* ValueError as e:
        del e
    class Inner:
        def forward(self, y):
            return y
    print(f"{x.shape!r:>10} {x.sum().item():.3f}")
    init_mod.copy_(x, init_mod.uniform_(x).log())
    sibling.thing.data = 3
    x @= w
    return x, h, rest, fn, ys, d, Inner, n


def tensors_in_containers(x, w):
    outs = [x @ w]
    outs[0] += 1
    return outs


def deep(x):
    return ''' + "(" * 150 + "x" + ")" * 150 + '''
'''

MATCH = '''
import torch


def f(x, w):
    h = x @ w
    match h.dim():
        case 2:
            x.add_(1)
        case _:
            pass
    return h
'''


@pytest.mark.skipif(sys.version_info < (3, 11), reason="except* needs Python 3.11")
def test_odd_constructs_do_not_crash_or_flag() -> None:
    assert lint_source(ODD, "odd.py", resolve_selection(["ALL"])) == []


@pytest.mark.skipif(sys.version_info < (3, 10), reason="match needs Python 3.10")
def test_match_statement_bodies_are_analysed() -> None:
    assert [d.code for d in lint_source(MATCH, "m.py")] == ["GG102"]


def test_files_without_frameworks_are_only_parsed() -> None:
    src = "def f(x, w):\n    h = x @ w\n    x += 1\n    return h\n"
    assert lint_source(src, "plain.py", resolve_selection(["ALL"])) == []


@pytest.mark.parametrize("src", ["\x00", "def f(:\n", "x = (\n", "\tif True:\n  pass\n"])
def test_unparsable_source_is_one_e999(src: str) -> None:
    (d,) = lint_source(src, "bad.py")
    assert d.code == "E999" and "\n" not in d.message and d.message.startswith("SyntaxError: ")
