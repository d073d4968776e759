"""Checkpointing. (a) A checkpoint reruns its function during backward: a conflict made
by a write in that recomputation names the `checkpoint(...)` call it belongs to and says
that recomputation runs at backward. (b) A non-reentrant checkpoint's recomputation reads
parameters, buffers and closure tensors as they are at backward: a write to one between
the forward and the backward is reported with its line and the checkpoint call's."""
from __future__ import annotations

import pytest
import torch
from helpers import line_of
from torch.utils.checkpoint import checkpoint

import gradguard

HERE = __file__


def _recomputed(source: str, marker: str, reentrant: bool = True) -> str:
    how = ("a reentrant checkpoint (use_reentrant=True) runs its function twice, under "
           "no_grad in forward (which saves nothing for backward) and again during backward "
           "with grad enabled, where this write ran" if reentrant else
           "a non-reentrant checkpoint reruns its region during backward, when backward "
           "first needs a tensor the region saved")
    return (f"; the write ran in the recomputation of `{source}` at {HERE}:{line_of(marker)}: "
            + how)


def _again(source: str, marker: str) -> str:
    return (f"; that line runs again at backward, when `{source}` at {HERE}:{line_of(marker)} "
            "recomputes its region")


def _rejected_as_stock_does(program, stock_error: str):
    """Stock PyTorch raises ``stock_error``; under detect() the program raises gradguard's
    error (a RuntimeError too); the one conflict found."""
    with pytest.raises(RuntimeError, match=stock_error):
        program()
    with gradguard.detect() as session, pytest.raises(gradguard.InplaceConflictError):
        program()
    (c,) = session.conflicts
    return c


def scaled_sigmoid(t):
    y = torch.sigmoid(t)  # SAVE-SIGMOID
    y.mul_(2)  # WRITE-SIGMOID
    return y


def save_then_write():
    x = torch.randn(3, requires_grad=True)
    y = checkpoint(scaled_sigmoid, x * 1, use_reentrant=True)  # CKPT-A
    y.sum().backward()


def test_a_write_in_the_recomputation_names_the_checkpoint_call():
    """The forward ran under no_grad (nothing saved, nothing raised); the recomputation
    saves sigmoid's output and overwrites it. Stock PyTorch's error names neither line."""
    c = _rejected_as_stock_does(save_then_write, "which is output 0 of Sigmoid, is at version 1")
    call = "y = checkpoint(scaled_sigmoid, x * 1, use_reentrant=True)"
    assert c.detail == ("SigmoidBackward0 needs f32[3] cpu v0->v1, saved at version 0; it is "
                        "now at version 1" + _recomputed(call, "CKPT-A"))
    assert c.fix == "write `y = y.mul(2)` instead of `y.mul_(2)`" + _again(call, "CKPT-A")
    assert c.write is not None and c.write.site is not None
    assert c.write.site.line == line_of("WRITE-SIGMOID")
    assert c.saved is not None and c.saved.site is not None
    assert c.saved.site.line == line_of("SAVE-SIGMOID")


def doubles_its_input(t):
    t.mul_(2)  # WRITE-INPUT
    return t.sin()


def test_the_leaf_error_raised_in_the_recomputation_names_the_checkpoint_call():
    """Recomputation hands the function detached inputs that require grad: writing one in
    place raises PyTorch's leaf error at backward, from a line the forward ran silently."""
    x = torch.randn(3, requires_grad=True)
    with gradguard.detect() as session:
        y = checkpoint(doubles_its_input, x * 1, use_reentrant=True)  # CKPT-LEAF
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad") as err:
            y.sum().backward()
    (c,) = session.conflicts
    call = "y = checkpoint(doubles_its_input, x * 1, use_reentrant=True)"
    assert c.kind == "leaf-inplace"
    assert c.detail == ("a leaf Variable that requires grad is being used in an in-place "
                        "operation" + _recomputed(call, "CKPT-LEAF"))
    assert c.fix.startswith("write `t = t.mul(2)` instead of `t.mul_(2)`; ")
    assert c.fix.endswith(_again(call, "CKPT-LEAF"))
    assert c.write is not None and c.write.site is not None
    assert c.write.site.line == line_of("WRITE-INPUT")
    assert c.summary() in "\n".join(err.value.__notes__)


BUF = torch.ones(3)


def counts_calls(t):
    with torch.no_grad():
        BUF.add_(1)  # WRITE-BUF
    return t * t


@pytest.mark.parametrize("reentrant", [True, False])
def test_a_recomputation_writing_what_another_node_saved_breaks_the_second_backward(reentrant):
    """The forward's write came before `y * BUF` saved BUF; the recomputation in the
    first backward writes it again, and the second backward through the retained graph
    finds it moved (both checkpoint implementations rerun the function)."""
    def program():
        x = torch.randn(3, requires_grad=True)
        y = checkpoint(counts_calls, x * 1, use_reentrant=reentrant)  # CKPT-BUF
        loss = (y * BUF).sum()  # SAVE-BUF
        loss.backward(retain_graph=True)
        loss.backward()

    c = _rejected_as_stock_does(program, r"is at version \d+; expected version \d+")
    call = "y = checkpoint(counts_calls, x * 1, use_reentrant=reentrant)"
    assert c.detail.endswith(_recomputed(call, "CKPT-BUF", reentrant))
    assert c.fix == "write `BUF = BUF.add(1)` instead of `BUF.add_(1)`" + _again(call, "CKPT-BUF")
    assert c.write is not None and c.write.site is not None and c.saved is not None
    assert (c.write.site.line, c.saved.user_site.line) == (line_of("WRITE-BUF"),
                                                           line_of("SAVE-BUF"))


# -- (b) non-reentrant checkpoint: what the region reads that is not its input -------------
class Masked(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.register_buffer("mask", torch.ones(4))

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.mask


NEW_MASK = torch.tensor([0.0, 1.0, 0.0, 1.0])


def refill(block: Masked) -> None:
    with torch.no_grad():
        block.mask.copy_(NEW_MASK)  # REFILL


def through_data(block: Masked) -> None:
    block.mask.data.mul_(0)  # THROUGH-DATA


def restored(block: Masked) -> None:
    old = block.mask.clone()
    block.mask.mul_(0)
    block.mask.copy_(old)


def weights_stepped(block: Masked) -> None:
    with torch.no_grad():
        block.lin.weight.add_(0.5)  # STEP


def micro_batch(block: Masked, write, determinism_check: str = "default") -> torch.Tensor:
    x = torch.ones(2, 4, requires_grad=True)
    y = checkpoint(block, x, use_reentrant=False,  # CKPT-B
                   determinism_check=determinism_check)
    write(block)
    loss = y.sum()
    loss.backward()  # BACKWARD-B
    assert x.grad is not None
    return x.grad


def _block() -> Masked:
    torch.manual_seed(0)
    return Masked()


def _unchecked_grad(write) -> torch.Tensor:
    """The gradient the program computes without the write (what the forward used)."""
    return micro_batch(_block(), lambda block: None)


@pytest.mark.parametrize("determinism_check", ["default", "none"])
def test_stock_pytorch_recomputes_with_the_new_mask_silently(determinism_check):
    grad = micro_batch(_block(), refill, determinism_check)
    assert not torch.equal(grad, _unchecked_grad(refill))


READ_FIX = ("move `{write}` after `loss.backward()`; or pass the tensor to the checkpointed "
            "function as an argument and give the new values a new tensor (`self.mask = "
            "new_mask`, not `self.mask.copy_(new_mask)`): checkpoint keeps its arguments, so "
            "the recomputation reads the tensor the forward read")


@pytest.mark.parametrize("determinism_check", ["default", "none"])
def test_a_buffer_refilled_under_no_grad_names_the_write_and_the_checkpoint_call(
        determinism_check):
    block = _block()
    with gradguard.detect(on_conflict="record") as session:
        micro_batch(block, refill, determinism_check)
    (c,) = session.conflicts
    assert (c.kind, c.code) == ("checkpoint-read-mutated", "GGR105")
    assert c.write is not None and c.write.site is not None
    assert (c.write.site.line, c.write.op) == (line_of("REFILL"), "Tensor.copy_")
    assert c.saved is not None and c.saved.site is not None
    assert c.saved.op == "torch.utils.checkpoint"
    assert c.saved.site.line == line_of("CKPT-B")
    assert c.tensor is not None and c.tensor.name == "block.mask"
    assert c.detail == (
        "`block.mask` is read inside a checkpointed region without being one of its inputs (the "
        "`checkpoint(...)` call under SAVED); saved there at version 0, it is now at version "
        "1, and its bytes differ: the recomputation during backward reads the new values, so "
        "the gradient is silently wrong (PyTorch checks no version there, and "
        "determinism_check compares only shape, dtype and device)")
    assert c.fix == READ_FIX.format(write="block.mask.copy_(NEW_MASK)")
    assert c.summary() == (f"checkpoint-read-mutated {HERE}:{line_of('REFILL')} in refill "
                           "(Tensor.copy_)")


def test_the_write_through_data_and_the_weight_update_are_named():
    with gradguard.detect(on_conflict="record") as session:
        micro_batch(_block(), through_data)
        micro_batch(_block(), weights_stepped)
    hidden, stepped = session.conflicts
    assert hidden.write is not None and hidden.write.alias == ".data"
    assert "its version did not move, and its bytes differ" in hidden.detail
    assert stepped.tensor is not None and stepped.tensor.name == "block.lin.weight"
    assert stepped.write is not None and stepped.write.site is not None
    assert stepped.write.site.line == line_of("STEP")


def test_raise_mode_stops_the_backward_that_would_recompute_from_the_new_values():
    with gradguard.detect() as session, pytest.raises(gradguard.InplaceConflictError) as err:
        micro_batch(_block(), refill)
    assert str(err.value).endswith(session.conflicts[0].summary())


def test_a_write_that_restored_the_bytes_and_a_clean_loop_are_not_reported():
    block = _block()
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    with gradguard.detect() as session:
        micro_batch(block, restored)
        for _ in range(2):  # the write after backward, as the fixed program does it
            micro_batch(block, lambda b: None)
            opt.step()
            refill(block)
    assert session.conflicts == [] and session.coverage_gaps == []


def test_protect_reports_it_unrepaired():
    """Recomputation reads the live buffer, not a saved tensor: no copy can stand in."""
    with gradguard.protect() as session:
        grad = micro_batch(_block(), refill)
    (c,) = session.conflicts
    assert c.kind == "checkpoint-read-mutated" and not c.repaired
    assert torch.equal(grad, micro_batch(_block(), refill))  # the program ran as without us


def test_an_optimizer_step_inside_backward_is_not_a_checkpoint_read_conflict():
    # PyTorch's "optimizer in backward" recipe: each parameter is updated by a gradient
    # hook during backward, after the region was recomputed: nothing it read changed.
    def run(guarded: bool):
        torch.manual_seed(0)
        l1, l2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def hook(p):
            with torch.no_grad():
                p.add_(p.grad, alpha=-0.1)
            p.grad = None

        for p in [*l1.parameters(), *l2.parameters()]:
            p.register_post_accumulate_grad_hook(hook)
        grads = []
        for _ in range(2):
            x = torch.ones(2, 4, requires_grad=True)
            checkpoint(lambda t: l2(torch.relu(l1(t))), x, use_reentrant=False).sum().backward()
            grads.append(x.grad)
        return grads

    plain = run(False)
    with gradguard.detect() as guard:  # raise mode: any report would raise
        guarded = run(True)
    assert guard.conflicts == []
    assert all(torch.equal(a, b) for a, b in zip(plain, guarded))


def test_a_known_checkpoint_read_conflict_then_a_restoring_write_adds_nothing():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    m = torch.ones(4)
    session = gradguard.detect(on_conflict="record")
    with session:
        for step in range(2):
            x = torch.randn(2, 4, requires_grad=True)
            loss = checkpoint(lambda t: (lin(t) * m).sum(), x, use_reentrant=False)
            m.data.mul_(2)  # MASK-WRITE
            if step == 1:
                m.data.div_(2)  # restores the bytes the region read
            loss.backward()
    (c,) = session.conflicts
    assert c.code == "GGR105" and c.write.user_site.line == line_of("MASK-WRITE")


def test_naming_the_saver_at_a_write_never_recomputes_a_checkpointed_region():
    # Under when="write" the report looks for the node that saved the written tensor; a
    # non-reentrant checkpoint's saved tensors unpack by rerunning the region (and its
    # BatchNorm): those are never unpacked for a report.
    def run():
        torch.manual_seed(0)
        bn, lin = torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 4)
        x = torch.randn(8, 4, requires_grad=True)
        a = x * 1
        b = a.sin()
        checkpoint(lambda t: bn(lin(t)), b, use_reentrant=False)
        a.mul_(2)
        return int(bn.num_batches_tracked), bn.running_mean.clone()

    stock = run()
    with gradguard.detect(on_conflict="record", when="write") as session:
        guarded = run()
    assert len(session.conflicts) == 1
    assert guarded[0] == stock[0] == 1
    assert torch.equal(guarded[1], stock[1])
