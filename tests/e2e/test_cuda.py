"""The sanitizer on a GPU: backward runs on autograd's device threads there, saved
tensors live in device memory, and optimizers take their foreach/fused CUDA paths.
Skipped without CUDA (CI has none); run on a GPU machine with
`python -m pytest tests/test_cuda.py`."""
from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.nn as nn
from helpers import line_of

import gradguard

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
HERE = os.path.abspath(__file__)


def test_inplace_after_sigmoid_on_cuda_names_both_lines():
    x = torch.randn(64, 32, device="cuda", requires_grad=True)
    with pytest.raises(gradguard.InplaceConflictError) as info:
        with gradguard.detect():
            h = torch.sigmoid(x)  # SAVE-cuda
            h.relu_()  # WRITE-cuda
            h.sum().backward()
    c = info.value.conflicts[0]
    assert c.write.site.line == line_of("WRITE-cuda")
    assert c.saved.site.line == line_of("SAVE-cuda")
    assert c.tensor.device.startswith("cuda") and c.saved.node == "SigmoidBackward0"


def test_data_write_on_cuda_is_reported_from_the_device_thread():
    x = torch.randn(16, device="cuda", requires_grad=True)
    with gradguard.detect(on_conflict="record") as s:
        y = torch.tanh(x)
        y.data.mul_(2)  # WRITE-cuda-data
        y.sum().backward()
    (c,) = s.conflicts
    assert c.write.site.line == line_of("WRITE-cuda-data") and c.write.alias == ".data"


class Disc(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


@pytest.mark.parametrize("kwargs", [{"foreach": True}, {"fused": True}, {"foreach": False}])
def test_gan_pattern_on_cuda_optimizers(kwargs):
    disc = Disc().cuda()
    opt_d = torch.optim.Adam(disc.parameters(), lr=0.1, **kwargs)
    x = torch.randn(8, 32, device="cuda", requires_grad=True)
    with pytest.raises(gradguard.InplaceConflictError) as info:
        with gradguard.detect():
            loss_g = disc(x).mean()
            disc(torch.randn(8, 32, device="cuda")).mean().backward()
            opt_d.step()  # WRITE-cuda-step
            loss_g.backward()
    c = info.value.conflicts[0]
    assert c.write.site.line == line_of("WRITE-cuda-step") and c.write.via == "torch.optim"
    assert c.tensor.name.startswith("disc.fc.")


def test_checksum_on_cuda_clean_program_is_clean_and_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 1)).cuda()
    x = torch.randn(16, 32, device="cuda")
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    with gradguard.detect(checksum=True) as s:
        model(x).sum().backward()
    assert s.conflicts == []
    assert all(torch.equal(a, p.grad) for a, p in zip(ref, model.parameters()))


def test_gpt2_training_steps_bit_identical_on_cuda():
    transformers = pytest.importorskip("transformers")
    torch.use_deterministic_algorithms(True)
    try:
        cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=128, vocab_size=512,
                                      n_positions=64, bos_token_id=0, eos_token_id=0)
        ids = torch.randint(0, 512, (4, 64), device="cuda")

        def run(guard):
            torch.manual_seed(0)
            model = transformers.GPT2LMHeadModel(cfg).cuda().train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            grads = []
            for step in range(2):
                torch.manual_seed(step)
                with guard() if guard else contextlib.nullcontext():
                    model(ids, labels=ids).loss.backward()
                    grads.append([p.grad.clone() for p in model.parameters()])
                    opt.step()
                    opt.zero_grad()
            return grads, [p.detach().clone() for p in model.parameters()]

        plain = run(None)
        guarded = run(gradguard.detect)
        for a, b in zip(plain[0], guarded[0]):
            assert all(torch.equal(p, q) for p, q in zip(a, b))
        assert all(torch.equal(p, q) for p, q in zip(plain[1], guarded[1]))
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("opt", ["adamw_fused", "sgd_foreach"])
def test_protect_on_cuda_matches_the_snapshot_reference(opt):
    """Copy-on-write on device memory, with backward on the device thread: the GAN
    ordering bug through CUDA foreach/fused steps gives the reference's gradients."""
    from gradguard._core.snapshot import snapshot_saved_tensors

    def program():
        torch.manual_seed(0)
        disc = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)).cuda()
        make = {"adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=0.5, fused=True),
                "sgd_foreach": lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9,
                                                          foreach=True)}[opt]
        o = make(disc.parameters())
        x = torch.randn(16, 8, device="cuda", requires_grad=True)
        loss_g = disc(x).mean()
        disc(torch.randn(16, 8, device="cuda")).mean().backward()
        o.step()  # WRITE-cuda-protect
        loss_g.backward()
        return x.grad

    with snapshot_saved_tensors():
        reference = program()
    with gradguard.protect() as session:
        got = program()
    torch.cuda.synchronize()
    # cuBLAS may pick different algorithms between runs: equal up to rounding
    assert torch.allclose(got, reference, rtol=1e-5, atol=1e-7)
    assert session.copies >= 1 and all(c.repaired for c in session.conflicts)
    assert session.copy_sites[0].write.line == line_of("WRITE-cuda-protect")
