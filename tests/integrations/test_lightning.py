"""`GradguardCallback` with a real Lightning Trainer (CPU, a few steps): a clean run is
bit for bit the run without it, a planted bug is reported, and no session outlives fit."""
from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn as nn
from helpers import line_of

import gradguard

L = pytest.importorskip("lightning.pytorch")

from gradguard.integrations.lightning import GradguardCallback  # noqa: E402


def trainer(tmp_path, *callbacks, steps=4):
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0,
                     default_root_dir=tmp_path, callbacks=list(callbacks))


def loader(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x.sum(1, keepdim=True) > 0).float()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.losses = []

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.binary_cross_entropy_with_logits(self.net(x), y)
        self.losses.append(loss.detach().clone())
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class GAN(L.LightningModule):
    """Manual optimisation with the discriminator stepped before the generator's backward."""

    def __init__(self, fixed=False):
        super().__init__()
        self.automatic_optimization = False
        self.fixed = fixed
        self.gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.disc = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, _):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        d = self.discriminate
        fake = self.gen(torch.randn(real.shape[0], 4))
        loss_d = -(torch.log(d(real)) + torch.log(1 - d(fake.detach()))).mean()
        loss_g = -torch.log(d(fake)).mean()  # SAVE
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_g.zero_grad()
        if self.fixed:
            self.manual_backward(loss_g)
            opt_d.step()
        else:
            opt_d.step()  # BUG: changes disc's weights while loss_g still needs them
            self.manual_backward(loss_g)
        opt_g.step()

    def discriminate(self, t):
        return torch.sigmoid(self.disc(t))  # DISC

    def configure_optimizers(self):
        return (torch.optim.Adam(self.gen.parameters(), lr=1e-3),
                torch.optim.Adam(self.disc.parameters(), lr=1e-3))


def fit(tmp_path, module, *callbacks, steps=4):
    torch.manual_seed(0)
    trainer(tmp_path, *callbacks, steps=steps).fit(module, loader())
    return module


def test_clean_run_is_bit_for_bit_the_plain_run(tmp_path):
    torch.manual_seed(1)
    plain = fit(tmp_path, Classifier())
    torch.manual_seed(1)
    err = io.StringIO()
    callback = GradguardCallback(json=tmp_path / "report.json", stream=err)
    guarded = fit(tmp_path, Classifier(), callback)
    assert len(plain.losses) == len(guarded.losses) == 4
    assert all(torch.equal(a, b) for a, b in zip(plain.losses, guarded.losses))
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), guarded.parameters()))
    assert callback.session.conflicts == [] and not callback._active
    assert err.getvalue() == "gradguard: no in-place conflicts found\n"
    assert json.loads((tmp_path / "report.json").read_text())["conflicts"] == []


def test_gan_step_before_backward_is_reported_and_fit_stops_with_pytorchs_error(tmp_path):
    err = io.StringIO()
    callback = GradguardCallback(stream=err)
    with pytest.raises(gradguard.InplaceConflictError) as raised:
        fit(tmp_path, GAN(), callback, steps=2)
    assert "modified by an inplace operation" in str(raised.value)  # PyTorch's sentence
    assert not callback._active  # left in on_exception: no session outlives fit
    (c,) = callback.session.conflicts
    assert (c.kind, c.write.op, c.write.via) == ("saved-tensor-mutated", "Tensor.addcdiv_",
                                                  "torch.optim")
    assert c.tensor.name == "self.disc.2.weight"  # as named from inside the module today
    saved = [(f.file, f.line) for f in c.saved.stack]
    assert saved[:2] == [(__file__, line_of("DISC")), (__file__, line_of("SAVE"))]
    # The write's innermost frame is Lightning's optimizer wrapper (shown, marked library);
    # the SUMMARY line and the FIX name the user's own `opt_d.step()` line.
    bug = line_of("BUG: changes disc's weights while loss_g still needs them")
    assert c.write.site.library and c.write.site.file != __file__
    assert (c.write.user_site.file, c.write.user_site.line) == (__file__, bug)
    report = err.getvalue()
    assert report.startswith("==== gradguard: saved-tensor-mutated [GGR101]")
    assert (f"SUMMARY: gradguard: saved-tensor-mutated {__file__}:{bug} in GAN.training_step "
            "(Tensor.addcdiv_)") in report
    assert "precision.py:123 in Precision.optimizer_step  (library)" in report
    assert c.fix == ("move `opt_d.step()` after `self.manual_backward(loss_g)`, or recompute "
                     "the forward after it: the optimizer step inside it "
                     "(`optimizer.step(closure=closure, **kwargs)`) updated parameters that "
                     "backward still needs")


def test_protect_mode_repairs_the_gan_and_fit_completes(tmp_path):
    callback = GradguardCallback(mode="protect", stream=io.StringIO())
    torch.manual_seed(0)
    run = trainer(tmp_path, callback, steps=3)
    run.fit(GAN(), loader())
    assert run.global_step >= run.max_steps  # fit went on to the end
    (c,) = callback.session.conflicts
    assert c.repaired and c.write.op == "Tensor.addcdiv_"
    assert "repaired: gradguard.protect kept the saved bytes" in callback.stream.getvalue()


class Boom(Classifier):
    def training_step(self, batch, i):
        if i == 1:
            raise ValueError("bad batch")
        return super().training_step(batch, i)


def test_a_failed_fit_leaves_no_session_and_still_reports(tmp_path):
    err = io.StringIO()
    callback = GradguardCallback(stream=err)
    with pytest.raises(ValueError, match="bad batch"):
        fit(tmp_path, Boom(), callback)
    assert not callback._active and callback.session is not None
    assert err.getvalue() == "gradguard: no in-place conflicts found\n"


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="mode must be"):
        GradguardCallback(mode="fix")
    with pytest.raises(ValueError, match="on_conflict must be"):
        GradguardCallback(on_conflict="ignore")
    with pytest.raises(ValueError, match="no such directory"):
        GradguardCallback(json="/nonexistent/dir/report.json")


def test_both_lightning_packages_accept_the_callback():
    pl = pytest.importorskip("pytorch_lightning")
    assert isinstance(GradguardCallback(), (L.Callback, pl.Callback))
    assert issubclass(GradguardCallback, L.Callback)
    assert GradguardCallback.__module__ == "gradguard.integrations.lightning"
