"""ORIGIN for the leaf kinds (GGR201/GGR202): what the written tensor is -- the view it was
written through and the line that made it, back to the parameter, or the leaf's creation
line -- and a FIX for `b[:, 4] += v` that does not propose the same in-place write."""
from __future__ import annotations

import pytest
import torch
from helpers import line_of

import gradguard

HERE = __file__


class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 18, 1)


def tweak(model, na, v):
    conv = model.conv
    b = conv.bias.view(na, -1)  # VIEW
    b[:, 4] += v  # WRITE-VIEW


def note_of(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def test_a_view_of_a_parameter_names_the_view_line_and_a_no_grad_fix():
    model = Head()
    with gradguard.detect() as s:
        with pytest.raises(RuntimeError, match="a view of a leaf Variable") as info:
            tweak(model, 3, 1.0)
    (c,) = s.conflicts
    note = note_of(info.value)
    assert (
        "TENSOR model.conv.bias (parameter) f32[3] cpu\n"
        f"ORIGIN view `b` of parameter `model.conv.bias`, made at {HERE}:{line_of('VIEW')} "
        "in tweak\n"
        "         b = conv.bias.view(na, -1)  # VIEW\n"
        "\n"
        "FIX ") in note
    assert c.fix == (
        "`b[:, 4] += v` writes into `model.conv.bias` in place (and so would "
        "`b[:, 4] = b[:, 4] + v`): for a deliberate change of its values, do it under "
        "`with torch.no_grad():` (`with torch.no_grad(): b[:, 4] += v`); otherwise build the "
        "new tensor out of place (`torch.where`, `torch.cat`, `.index_put(...)` without the "
        "underscore) and use it instead of writing into the view")
    assert "b[:, 4] = b[:, 4] + v` instead" not in c.fix
    assert c.summary() == f"leaf-view-inplace {HERE}:{line_of('WRITE-VIEW')} in tweak (+=)"
    d = c.to_dict()
    assert d["origin"] == [{"what": "view `b` of parameter `model.conv.bias`",
                            "site": {"file": HERE, "line": line_of("VIEW"), "function": "tweak",
                                     "source": "b = conv.bias.view(na, -1)  # VIEW"}}]
    assert gradguard.Conflict.from_dict(d).origin == c.origin


def test_a_leaf_names_its_creation_line():
    with gradguard.detect() as s:
        leaf = torch.randn(4, 3, requires_grad=True)  # CREATE
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad") as info:
            leaf += 1  # WRITE-LEAF
    (c,) = s.conflicts
    note = note_of(info.value)
    assert (
        "TENSOR f32[4,3] cpu\n"
        f"ORIGIN leaf `leaf` (requires grad), created at {HERE}:{line_of('CREATE')} in "
        "test_a_leaf_names_its_creation_line\n"
        "         leaf = torch.randn(4, 3, requires_grad=True)  # CREATE\n") in note
    assert c.fix.startswith("write `leaf = leaf + 1` instead of `leaf += 1`; ")


def test_a_view_of_a_plain_leaf_names_both_lines():
    with gradguard.detect() as s:
        w = torch.randn(4, requires_grad=True)  # LEAF-W
        head = w[:2]  # HEAD
        with pytest.raises(RuntimeError, match="a view of a leaf Variable"):
            head.mul_(2)
    (c,) = s.conflicts
    assert [(o.what, o.site.line) for o in c.origin] == [
        ("view `head` of leaf `w`", line_of("HEAD")),
        ("leaf `w` (requires grad)", line_of("LEAF-W"))]
    report = s.report()
    assert (f"ORIGIN view `head` of leaf `w`, made at {HERE}:{line_of('HEAD')} in "
            "test_a_view_of_a_plain_leaf_names_both_lines\n"
            "         head = w[:2]  # HEAD\n"
            f"       leaf `w` (requires grad), created at {HERE}:{line_of('LEAF-W')} in "
            "test_a_view_of_a_plain_leaf_names_both_lines\n") in report
    # the fixed order of sections holds, and the SUMMARY line is the last
    assert report.index("TENSOR") < report.index("ORIGIN") < report.index("FIX")
    assert report.splitlines()[-1].startswith("SUMMARY: gradguard: leaf-view-inplace ")
