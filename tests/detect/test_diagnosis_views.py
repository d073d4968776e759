"""Views PyTorch will not let be written in place (GGR203, GGR205) and `out=` calls on
tensors that require grad (GGR206): the report names the line that made the view, the op,
Function or hooked module behind it, and a FIX in the user's names. Real autograd."""
from __future__ import annotations

import pytest
import torch
from helpers import line_of

import gradguard

HERE = __file__


def note_of(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def explained(fn, match):
    with gradguard.detect() as s:
        with pytest.raises(RuntimeError, match=match) as info:
            fn()
    (c,) = s.conflicts
    return c, note_of(info.value)


def attention(qkv):
    q, k, v = qkv.split(2, dim=-1)  # SPLIT
    q.mul_(0.5)  # WRITE-SPLIT
    return q @ k.T + v


def test_split_names_the_split_line_and_the_view():
    x = torch.randn(3, 6, requires_grad=True)
    c, note = explained(lambda: attention(x * 1), "Output 0 of Split is a view")
    assert c.kind == "multi-output-view-inplace" and c.code == "GGR203"
    assert (
        "TENSOR f32[3,2] cpu\n"
        "ORIGIN view `q` of `qkv`: output 0 of split, which returns several views, made at "
        f"{HERE}:{line_of('SPLIT')} in attention\n"
        "         q, k, v = qkv.split(2, dim=-1)  # SPLIT\n\n"
        "FIX write `q = q.mul(0.5)` instead of `q.mul_(0.5)`, or clone it before writing "
        "(`q = q.clone()`): `q` is one of the views `split` returned, which share one backward "
        "node and cannot be written in place\n\n"
        f"SUMMARY: gradguard: multi-output-view-inplace {HERE}:{line_of('WRITE-SPLIT')} in "
        "attention (Tensor.mul_)") in note
    d = c.to_dict()
    assert d["origin"][0]["site"]["line"] == line_of("SPLIT")
    assert gradguard.Conflict.from_dict(d).origin == c.origin


def test_unbind_in_a_loop_names_the_for_line():
    x = torch.randn(3, 4, requires_grad=True)

    def per_column():
        y = x * 1
        for col in y.unbind(1):  # UNBIND
            col.add_(1)  # WRITE-UNBIND

    c, note = explained(per_column, "Output 0 of Unbind")
    assert (
        "ORIGIN view `col` of `y`: output 0 of unbind, which returns several views, made at "
        f"{HERE}:{line_of('UNBIND')} in test_unbind_in_a_loop_names_the_for_line.<locals>."
        "per_column\n"
        "         for col in y.unbind(1):  # UNBIND\n") in note
    assert c.fix == (
        "write `col = col.add(1)` instead of `col.add_(1)`, or clone it before writing "
        "(`col = col.clone()`): `col` is one of the views `unbind` returned, which share one "
        "backward node and cannot be written in place")


def test_chunk_then_an_index_write_names_chunk_not_the_write_line():
    x = torch.randn(4, requires_grad=True)

    def halves():
        a, b = (x * 1).chunk(2)  # CHUNK
        a[0] = 3  # WRITE-CHUNK
        return b

    c, note = explained(halves, "is a view and is being modified inplace")
    (o,) = c.origin
    assert o.what == "view `a`: output 0 of chunk, which returns several views"
    assert o.site.line == line_of("CHUNK")  # `a[0] = 3` writes a, it does not make a new `a`
    assert c.fix == (
        "clone it before writing (`a = a.clone()`), or build the new value out of place: `a` "
        "is one of the views `chunk` returned, which share one backward node and cannot be "
        "written in place")


class Flatten(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view(-1)  # a view of its input

    @staticmethod
    def backward(ctx, grad):
        return grad.view(2, 2)


def test_a_view_a_custom_function_returned():
    x = torch.randn(2, 2, requires_grad=True)

    def run():
        h = x * 1
        flat = Flatten.apply(h)  # APPLY
        flat.add_(1)  # WRITE-APPLY

    c, note = explained(run, "Output 0 of Flatten is a view")
    assert c.kind == "function-view-inplace" and c.code == "GGR205"
    assert (
        "ORIGIN view `flat`: output 0 of custom autograd.Function `Flatten`, a view of `h` "
        "(its forward returned a view of an input, or an input as-is), made at "
        f"{HERE}:{line_of('APPLY')} in test_a_view_a_custom_function_returned.<locals>.run\n"
        "         flat = Flatten.apply(h)  # APPLY\n") in note
    assert c.fix == (
        "write `flat = flat.add(1)` instead of `flat.add_(1)`, or clone it where it is made "
        "(`flat = Flatten.apply(h).clone()`), or have `Flatten`'s forward return a new tensor "
        "(`.clone()` what it returns): `Flatten` returned a view (of an input, or an input "
        "as-is), which cannot be written in place")


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)
        self.act = torch.nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)  # HOOKED
        return self.act(h)  # WRITE-HOOKED


def test_a_full_backward_hook_names_the_hooked_module_call():
    block = Block()
    block.fc.register_full_backward_hook(lambda module, grad_in, grad_out: None)
    c, note = explained(lambda: block(torch.randn(2, 3)),
                        "Output 0 of BackwardHookFunction is a view")
    assert c.kind == "function-view-inplace"
    assert c.write.user_site.line == line_of("WRITE-HOOKED")
    assert (
        "ORIGIN view `h`: the output of `self.fc`, passed as a view through its full backward "
        "hook (BackwardHookFunction, from register_full_backward_hook), made at "
        f"{HERE}:{line_of('HOOKED')} in Block.forward\n"
        "         h = self.fc(x)  # HOOKED\n") in note
    assert c.fix == (
        "this line runs an in-place `relu_` (probably a module built with `inplace=True`): "
        "construct it without `inplace=True`, or clone it where it is made "
        "(`h = self.fc(x).clone()`): `self.fc` has a full backward hook "
        "(`register_full_backward_hook`), which hands on the module's outputs as views that "
        "cannot be written in place")


def test_a_full_backward_hook_on_a_plain_module():
    lin = torch.nn.Linear(3, 3)
    lin.register_full_backward_hook(lambda module, grad_in, grad_out: None)

    def run():
        y = lin(torch.randn(2, 3))  # LIN
        y.relu_()

    c, _ = explained(run, "BackwardHookFunction")
    assert c.origin[0].site.line == line_of("LIN")
    assert c.fix.startswith("write `y = y.relu()` instead of `y.relu_()`, or clone it where it "
                            "is made (`y = lin(torch.randn(2, 3)).clone()`): `lin` has a full "
                            "backward hook")


def test_out_into_a_leaf_names_its_creation_line():
    def run():
        alpha = torch.rand(3, requires_grad=True)  # LEAF-ALPHA
        torch.clamp(alpha, 0, 1, out=alpha)  # WRITE-OUT

    c, note = explained(run, "functions with out=")
    assert c.kind == "out-requires-grad" and c.code == "GGR206"
    assert (
        "TENSOR f32[3] cpu\n"
        "ORIGIN leaf `alpha` (requires grad), created at "
        f"{HERE}:{line_of('LEAF-ALPHA')} in test_out_into_a_leaf_names_its_creation_line."
        "<locals>.run\n"
        "         alpha = torch.rand(3, requires_grad=True)  # LEAF-ALPHA\n\n"
        "FIX write `alpha = torch.clamp(alpha, 0, 1)` instead of "
        "`torch.clamp(alpha, 0, 1, out=alpha)` (a new tensor, which autograd differentiates); "
        "for a deliberate update of `alpha`'s values, keep `out=` under "
        "`with torch.no_grad():`\n\n"
        f"SUMMARY: gradguard: out-requires-grad {HERE}:{line_of('WRITE-OUT')} in "
        "test_out_into_a_leaf_names_its_creation_line.<locals>.run (torch.clamp(out=))") in note


def test_out_into_a_parameter_proposes_no_grad():
    lin = torch.nn.Linear(3, 3)
    c, note = explained(lambda: torch.clamp(lin.weight, -1, 1, out=lin.weight),
                        "functions with out=")
    assert "TENSOR lin.weight (parameter) f32[3,3] cpu\nORIGIN parameter `lin.weight`\n" in note
    assert c.fix == (
        "for a deliberate update of `lin.weight`'s values (a parameter step, a clamp), make "
        "the call under `with torch.no_grad():`; to differentiate through it, drop `out=` and "
        "use the result as a new tensor")


def test_out_with_an_input_that_requires_grad():
    w = torch.randn(3, requires_grad=True)

    def run():
        a = w * 2  # MADE-A
        c = torch.empty(3)
        torch.mul(a, 2, out=c)

    c, note = explained(run, "functions with out=")
    assert (f"ORIGIN `a` (requires grad, made by mul), created at {HERE}:{line_of('MADE-A')} "
            "in test_out_with_an_input_that_requires_grad.<locals>.run\n") in note
    assert c.fix == (
        "write `c = torch.mul(a, 2)` instead of `torch.mul(a, 2, out=c)`: an input of this "
        "call requires grad, and a call with `out=` records no backward node (for a result "
        "that needs no gradient, make the call under `with torch.no_grad():`)")


def test_correct_programs_are_unchanged():
    """The explanations never change what runs: the same errors, and nothing for the
    fixed forms."""
    x = torch.randn(3, 6, requires_grad=True)
    with gradguard.detect() as s:
        q, k, v = (x * 1).split(2, dim=-1)
        q = q.mul(0.5)
        (q @ k.T + v.sum()).sum().backward()
        with torch.no_grad():
            torch.clamp(x, 0, 1, out=x)
    assert s.conflicts == []


def rescaled_attention(x):
    qkv = x * 1
    q, k, v = qkv.split(2, dim=-1)  # SPLIT-BASE
    qkv.mul_(2)  # WRITE-BASE
    return q @ k.T  # USE


def test_a_write_into_the_base_is_named_when_a_view_is_next_used():
    """PyTorch raises where the view is next used (any op, not a write): gradguard
    explains it as the error leaves the session, naming the earlier write into the base."""
    x = torch.randn(3, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="Output 1 of Split is a view and its base or "
                       "another view of its base") as info:
        with gradguard.detect() as s:
            rescaled_attention(x)
    (c,) = s.conflicts
    note = note_of(info.value)
    assert c.kind == "multi-output-view-inplace"
    assert (
        "WRITE Tensor.mul_\n"
        f"    #0 {HERE}:{line_of('WRITE-BASE')} in rescaled_attention\n"
        "         qkv.mul_(2)  # WRITE-BASE\n\n"
        "TENSOR f32[3,2] cpu\n"
        "ORIGIN view `k` of `qkv`: output 1 of split, which returns several views, made at "
        f"{HERE}:{line_of('SPLIT-BASE')} in rescaled_attention\n"
        "         q, k, v = qkv.split(2, dim=-1)  # SPLIT-BASE\n\n"
        "FIX write `qkv = qkv.mul(2)` instead of `qkv.mul_(2)`, or clone it right after it is "
        "made, before that write (`k = k.clone()`): `qkv` (or another view of it) was written "
        "in place after `k` was made from it, and `k` is one of the views `split` returned, "
        "which share one backward node and cannot be written in place\n\n"
        f"SUMMARY: gradguard: multi-output-view-inplace {HERE}:{line_of('WRITE-BASE')} in "
        "rescaled_attention (Tensor.mul_)") in note


BASE_WRITTEN_SCRIPT = '''\
import torch


class Flatten(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view(-1)

    @staticmethod
    def backward(ctx, grad):
        return grad.view(2, 2)


h = torch.randn(2, 2, requires_grad=True) * 1
flat = Flatten.apply(h)  # S-APPLY
h[0, 0] = 0  # S-WRITE
print(flat.sum())  # S-USE
'''


def test_gradguard_run_explains_a_custom_function_view_whose_base_was_written(tmp_path, capsys):
    from gradguard._cli.main import main

    script = tmp_path / "flat.py"
    script.write_text(BASE_WRITTEN_SCRIPT)
    assert main(["run", str(script)]) == 1
    err = capsys.readouterr().err
    write, made = line_of("S-WRITE", str(script)), line_of("S-APPLY", str(script))
    assert f'File "{script}", line {line_of("S-USE", str(script))}, in <module>' in err
    report = (
        "WRITE Tensor.__setitem__\n"
        f"    #0 {script}:{write} in <module>\n"
        "         h[0, 0] = 0  # S-WRITE\n\n"
        "TENSOR f32[4] cpu\n"
        "ORIGIN view `flat`: output 0 of custom autograd.Function `Flatten`, a view of `h` (its "
        "forward returned a view of an input, or an input as-is), made at "
        f"{script}:{made} in <module>\n"
        "         flat = Flatten.apply(h)  # S-APPLY\n")
    assert err.count(report) == 2  # the note on the traceback, then the report at exit
    assert err.count(f"SUMMARY: gradguard: function-view-inplace {script}:{write} in <module> "
                     "(Tensor.__setitem__)") == 2


def test_writing_a_split_view_after_its_base_keeps_pytorchs_error_type():
    def f():
        w = torch.randn(4, requires_grad=True)
        x = w * 1
        a, b = x.split(2)
        x.mul_(2)  # BASE-WRITE
        a[0] = 3  # VIEW-WRITE
        return a

    with pytest.raises(RuntimeError) as stock:
        f()
    with pytest.raises(RuntimeError) as guarded:
        with gradguard.detect(on_conflict="record") as session:
            f()
    assert type(guarded.value) is type(stock.value)
    assert str(guarded.value) == str(stock.value)
    (c,) = session.conflicts
    assert c.write.user_site.line == line_of("VIEW-WRITE")
    assert "`x.mul_(2)`" in c.fix  # the earlier write into the base, named


def test_the_base_write_is_named_when_the_error_is_raised_in_the_with_block_itself():
    # The frame running the `with` block is at the `with` line when the session exits:
    # the traceback's own line is what counts.
    w = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError, match="its base or another view of its base"):
        with gradguard.detect(on_conflict="record") as s:
            x = w * 1
            a, b = x.split(2)  # WITH-SPLIT
            x.mul_(2)  # WITH-WRITE
            b.sum()
    (c,) = s.conflicts
    assert c.write.user_site.line == line_of("WITH-WRITE")
    assert c.origin[0].site.line == line_of("WITH-SPLIT")
