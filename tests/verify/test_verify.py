"""gradguard.verify(): the step's gradients against a reference run in which every saved
tensor is copied at save time, on real training steps (GPT-2 with dropout and AdamW)."""
from __future__ import annotations

import pytest
import torch
from helpers import line_of

import gradguard
from gradguard._verify.verify import compare

transformers = pytest.importorskip("transformers")


def _gpt2(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)  # dropout 0.1: the RNG matters
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _batch():
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def buggy_step(model, batch, opt):
    opt.zero_grad()
    out = model(**batch)
    model.transformer.h[0].mlp.c_fc.weight.data.mul_(0.5)  # WRITE-planted
    out.loss.backward()
    opt.step()
    return out.loss


def clean_step(model, batch, opt):
    opt.zero_grad()
    out = model(**batch)
    out.loss.backward()
    opt.step()
    return out.loss


def test_verify_finds_the_planted_data_write_in_a_gpt2_step():
    model, opt = _gpt2()
    batch = _batch()
    torch.manual_seed(7)
    result = gradguard.verify(buggy_step, model, batch, opt)

    # Independent runs from the same start: the program as written, once, and without the bug.
    as_written, opt_w = _gpt2()
    torch.manual_seed(7)
    buggy_step(as_written, batch, opt_w)
    correct, opt_c = _gpt2()
    torch.manual_seed(7)
    clean_step(correct, batch, opt_c)

    assert not result.ok and result.error is None
    names = [n for n, _ in model.named_parameters()]
    assert result.checked == names + ["return"]
    want = {}
    for (name, p), pw, pc in zip(model.named_parameters(), as_written.parameters(),
                                 correct.parameters()):
        # verify leaves the state one ordinary call leaves (same dropout masks, one step)
        assert torch.equal(p, pw) and torch.equal(p.grad, pw.grad), name
        err = (pw.grad.double() - pc.grad.double()).abs()
        if (err > 1e-6 + 1e-5 * pc.grad.double().abs()).any():
            want[name] = float(err.max())
    got = {d.name: d.max_abs_err for d in result.differences}
    assert got.keys() == want.keys()
    assert "transformer.h.0.attn.c_attn.weight" in got and "transformer.wte.weight" in got
    assert not any(n.startswith(("transformer.h.1.", "transformer.ln_f")) for n in got)
    assert "transformer.h.0.mlp.c_fc.weight" not in got  # its own grad reads the input only
    for name in got:
        assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-9)

    (conflict,) = result.conflicts
    assert conflict.code == "GGR101" and conflict.write.alias == ".data"
    assert conflict.write.site.line == line_of("WRITE-planted")
    assert conflict.tensor.name.endswith("transformer.h.0.mlp.c_fc.weight")
    assert conflict.saved.node == "AddmmBackward0"
    report = result.report()
    assert f"{len(got)} of {len(result.checked)} checked tensors differ" in report
    assert "transformer.h.0.attn.c_attn.weight[64,192]  max abs err" in report
    assert "saved-tensor-mutated" in report
    assert torch.equal(result.value, torch.as_tensor(result.value))  # the normal run's loss


def test_verify_passes_a_correct_step_and_catches_a_bug_hidden_by_zero_grad():
    model, opt = _gpt2()
    batch = _batch()
    result = gradguard.verify(clean_step, model, batch, opt)
    assert result.ok and result.conflicts == [] and result.differences == []
    assert "all 29 checked tensors match" in result.report()

    def step_that_clears_grads(model, batch, opt):
        buggy_step(model, batch, opt)
        opt.zero_grad(set_to_none=True)  # grads are gone when the step returns

    result = gradguard.verify(step_that_clears_grads, model, batch, opt)
    assert {d.name for d in result.differences} >= {"transformer.wte.weight"}
    assert all(p.grad is None for p in model.parameters())


def test_verify_a_leaf_argument_against_the_hand_computed_error():
    x = torch.linspace(-2, 2, 9, requires_grad=True)

    def step(x):
        y = torch.tanh(x)
        y.data.mul_(2)  # backward reads 2*tanh(x): grad 1 - 4 tanh^2 instead of 1 - tanh^2
        y.sum().backward()

    result = gradguard.verify(step, x)
    (diff,) = result.differences
    t2 = torch.tanh(x.detach()).double() ** 2
    assert diff.name == "args[0]" and diff.shape == (9,) and diff.numel == 9
    assert diff.max_abs_err == pytest.approx(float((3 * t2).max()))
    assert diff.max_rel_err == pytest.approx(float((3 * t2 / (1 - t2)).max()))
    assert diff.mismatched == 8  # tanh(0) = 0: the middle element is right
    assert [c.code for c in result.conflicts] == ["GGR101"]
    assert torch.allclose(x.grad, 1 - 4 * t2.float())  # the program as written ran last

    named = gradguard.verify(step, x, params={"x": x}, rtol=0.0, atol=1e9)
    assert named.checked == ["x"] and named.ok  # a huge atol accepts the difference


def test_verify_compares_returned_gradients_of_autograd_grad():
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 4)

    def step(w, x):
        h = torch.sigmoid(x @ w)
        h.data.add_(1.0)
        return torch.autograd.grad(h.sum(), [w])

    result = gradguard.verify(step, w, x)
    assert [d.name for d in result.differences] == ["return[0]"]
    assert result.checked == ["args[0]", "return[0]"]  # w has no .grad: nothing to compare


def test_verify_reports_a_step_that_stock_pytorch_rejects():
    x = torch.randn(3, requires_grad=True)

    def step(x):
        y = x.exp()
        y.add_(1)
        y.sum().backward()

    result = gradguard.verify(step, x)
    assert not result.ok and result.differences == []
    assert "modified by an inplace operation" in result.error
    assert [c.code for c in result.conflicts] == ["GGR101"]
    assert result.report().startswith("gradguard.verify: the step failed as written")


def test_verify_rejects_bad_input_with_a_message_that_says_what_to_do():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match=r"verify\(train_step, model, batch\)"):
        gradguard.verify(x)
    with pytest.raises(ValueError, match="rtol must be a number >= 0"):
        gradguard.verify(lambda x: None, x, rtol=-1)
    with pytest.raises(ValueError, match="pass the model"):
        gradguard.verify(lambda a: None, torch.randn(3))
    with pytest.raises(ValueError, match="must be a leaf tensor"):
        gradguard.verify(lambda a: None, x, params=[x * 2])
    with pytest.raises(TypeError, match="params must be an nn.Module"):
        gradguard.verify(lambda a: None, x, params=3)


def test_compare_treats_nan_as_equal_and_missing_grads_as_different():
    a = torch.tensor([1.0, float("nan"), 3.0])
    assert compare("a", a, a.clone(), 0.0, 0.0) is None
    b = torch.tensor([1.0, float("nan"), 0.0])
    diff = compare("a", a, b, 1e-5, 1e-6)
    assert (diff.max_abs_err, diff.max_rel_err, diff.mismatched) == (3.0, float("inf"), 1)
    missing = compare("a", None, b, 1e-5, 1e-6)
    assert missing.note == "no gradient in the normal run" and missing.mismatched == 3
