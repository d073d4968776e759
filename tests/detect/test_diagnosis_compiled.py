"""A compiled `opt.step()` (torch.compile) that clobbers what an eager graph saved: no
write is intercepted inside the compiled region, so the FIX says what most likely happened
and how to stop at the write (compilation off, `--when write`); the coverage gap no longer
claims compiled writes cannot clobber saved tensors."""
from __future__ import annotations

import pytest
import torch
from helpers import line_of

import gradguard
from gradguard._cli.run import COMPILE_GAP


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 4, requires_grad=True)
    model(x).sum().backward()  # grads: the step writes the parameters

    @torch.compile(backend="aot_eager")
    def step():
        opt.step()  # COMPILED-STEP

    return model, x, step


def test_a_compiled_step_gets_a_fix_pointing_at_when_write(fresh_dynamo):
    model, x, step = setup()
    with gradguard.detect(on_conflict="record") as s:
        loss = (x @ model.weight).sum()  # SAVE
        step()
        with pytest.raises(gradguard.InplaceConflictError):
            loss.backward()
    (c,) = s.conflicts
    assert c.write is None
    assert c.saved.site.line == line_of("SAVE")
    assert c.fix == (
        "no eager write to it was seen, and torch.compile ran: writes inside compiled "
        "regions are not intercepted, so a compiled in-place update (a compiled "
        "`opt.step()`, say) most likely changed it after it was saved; move that call after "
        "`loss.backward()`, or, to stop at the write, rerun with compilation off "
        "(`TORCHDYNAMO_DISABLE=1`) under `gradguard run --when write` (or "
        "`gradguard.detect(when=\"write\")`)")


def test_the_advice_works_compilation_off_and_when_write_stop_at_the_step(fresh_dynamo):
    model, x, step = setup()
    with torch._dynamo.config.patch(disable=True):  # what TORCHDYNAMO_DISABLE=1 sets
        with pytest.raises(gradguard.InplaceConflictError) as info:
            with gradguard.detect(when="write"):
                loss = (x @ model.weight).sum()
                step()  # CALL
                loss.backward()
    (c,) = info.value.conflicts
    assert (c.write.site.line, c.write.site.source) == (line_of("COMPILED-STEP"),
                                                       "opt.step()  # COMPILED-STEP")
    assert c.write.stack[1].line == line_of("CALL")


def test_the_coverage_gap_says_what_a_compiled_write_can_do():
    gap = COMPILE_GAP.format(n=1, s="")
    assert "cannot clobber" not in gap
    assert gap == (
        "torch.compile ran (1 graph): writes inside compiled regions were not intercepted. "
        "A compiled graph's own saved tensors are safe from its own writes (it is "
        "functionalized) and are still checked against eager writes at backward; but a "
        "compiled in-place update (a compiled `opt.step()`) into a tensor an eager graph "
        "saved is caught only at backward, by its version, without the writing line: to "
        "stop at such a write, rerun with compilation off (TORCHDYNAMO_DISABLE=1) and "
        "--when write")
