"""`GradguardCallback` with a real `transformers.Trainer` on a random-init tiny GPT-2 and a
dataset made here (no downloads): a clean run is bit for bit the run without it, a planted
bug is reported at the user's line, and a failed train() leaves no session."""
from __future__ import annotations

import io
import json

import pytest
import torch
from helpers import line_of

transformers = pytest.importorskip("transformers")

from gradguard.integrations.huggingface import GradguardCallback  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16, length=12):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class RecordingTrainer(transformers.Trainer):
    """The real Trainer, keeping every training loss exactly."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        self.losses.append((loss[0] if isinstance(loss, tuple) else loss).detach().clone())
        return loss


def train(tmp_path, *callbacks, steps=3, hook=None):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                     n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    if hook is not None:
        model.transformer.h[0].mlp.c_proj.register_forward_hook(hook)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=Tokens(),
                               callbacks=list(callbacks))
    trainer.losses = []
    trainer.train()
    return trainer


def test_clean_run_is_bit_for_bit_the_plain_run(tmp_path):
    plain = train(tmp_path)
    err = io.StringIO()
    callback = GradguardCallback(json=tmp_path / "report.json", stream=err)
    guarded = train(tmp_path, callback)
    assert len(plain.losses) == len(guarded.losses) == 3
    assert all(torch.equal(a, b) for a, b in zip(plain.losses, guarded.losses))
    assert all(torch.equal(a, b) for a, b in zip(plain.model.parameters(),
                                                 guarded.model.parameters()))
    assert callback.session.conflicts == [] and not callback._active
    assert err.getvalue() == "gradguard: no in-place conflicts found\n"
    assert json.loads((tmp_path / "report.json").read_text())["conflicts"] == []


def rescale_input(module, inputs, output):
    # c_proj saved its input for backward; rescaling it through `.data` is invisible
    inputs[0].data.mul_(0.5)  # WRITE


def test_planted_bug_is_reported_at_the_users_line_and_training_goes_on(tmp_path):
    err = io.StringIO()
    callback = GradguardCallback(stream=err, json=tmp_path / "report.json")
    trainer = train(tmp_path, callback, hook=rescale_input)
    assert len(trainer.losses) == 3  # a silent bug: record mode lets the run finish
    (c,) = callback.session.conflicts
    assert c.kind == "saved-tensor-mutated" and c.write.alias == ".data"
    assert (c.write.site.file, c.write.site.line) == (__file__, line_of("WRITE"))
    report = err.getvalue()
    assert report.startswith("==== gradguard: saved-tensor-mutated [GGR101]")
    assert report.rstrip().endswith(f"{__file__}:{line_of('WRITE')} in rescale_input "
                                    "(Tensor.mul_)")
    (saved,) = json.loads((tmp_path / "report.json").read_text())["conflicts"]
    assert saved["mutation"]["line"] == line_of("WRITE")


def fail_on_third_call(calls=[]):  # noqa: B006 - a counter across calls
    def hook(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("bad batch")
    return hook


def test_a_failed_train_leaves_no_session_and_still_reports(tmp_path):
    err = io.StringIO()
    callback = GradguardCallback(stream=err)
    with pytest.raises(ValueError, match="bad batch"):
        train(tmp_path, callback, hook=fail_on_third_call([]))
    assert not callback._active and callback.session is not None
    assert err.getvalue() == "gradguard: no in-place conflicts found\n"
    assert GradguardCallback.__module__ == "gradguard.integrations.huggingface"
