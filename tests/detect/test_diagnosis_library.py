"""Writes that library code makes for the user: the SUMMARY line and the FIX name the
user's own line, in the user's names; library frames are shown, marked, beneath.

The "library" is a real package written under a directory named ``site-packages`` on
``sys.path``; the autograd is real."""
from __future__ import annotations

import importlib
import os
import sys
import textwrap

import pytest
import torch
from helpers import line_of

import gradguard
from gradguard._core import sites

HERE = __file__

LIBRARY = '''\
import torch


class Trainer:
    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self):
        self.optimizer.step()  # LIB-STEP


class EMA:
    def __init__(self, model):
        self.shadow = [p.detach().clone() + 1 for p in model.parameters()]

    def copy_to(self, model):
        with torch.no_grad():
            for s, p in zip(self.shadow, model.parameters()):
                p.copy_(s)  # LIB-COPY


def deep(x, w, depth=6):
    if depth == 0:
        return torch.tanh(x @ w)  # LIB-SAVE
    return deep(x, w, depth - 1)
'''


@pytest.fixture(scope="module")
def fakelib(tmp_path_factory):
    root = tmp_path_factory.mktemp("env") / "site-packages"
    (root / "gg_fakelib").mkdir(parents=True)
    path = root / "gg_fakelib" / "__init__.py"
    path.write_text(textwrap.dedent(LIBRARY))
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("gg_fakelib")
        yield module
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("gg_fakelib", None)


def lib_line(module, marker):
    return line_of(marker, module.__file__)


def test_library_files_are_told_from_the_users():
    assert sites.is_library_file(os.__file__)  # the stdlib
    assert sites.is_library_file(os.path.join(os.sep, "x", "site-packages", "lib", "m.py"))
    assert sites.is_library_file(os.path.join(os.sep, "x", "dist-packages", "m.py"))
    assert not sites.is_library_file(HERE)  # the user's own file, under the cwd
    assert not sites.is_library_file("<stdin>")
    # a virtual environment inside the project is still library code
    assert sites.is_library_file(os.path.join(os.getcwd(), ".venv", "lib", "site-packages",
                                              "m.py"))


def test_an_optimizer_step_inside_a_library_names_the_users_call(fakelib):
    model = torch.nn.Linear(3, 3)
    trainer = fakelib.Trainer(torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(2, 3, requires_grad=True)
    model(x).sum().backward()  # the parameters have grads: the step writes them
    with pytest.raises(gradguard.InplaceConflictError) as info:
        with gradguard.detect():
            loss = torch.tanh(model(x)).sum()  # SAVE-STEP
            trainer.step()  # STEP
            loss.backward()
    (c,) = info.value.conflicts
    report = str(info.value)
    lib = fakelib.__file__
    assert (f"WRITE Tensor.add_  (inside torch.optim)\n"
            f"    #0 {lib}:{lib_line(fakelib, 'LIB-STEP')} in Trainer.step  (library)\n"
            f"         self.optimizer.step()  # LIB-STEP\n"
            f"    #1 {HERE}:{line_of('STEP')} in "
            "test_an_optimizer_step_inside_a_library_names_the_users_call\n"
            "         trainer.step()  # STEP\n") in report
    assert c.fix == ("move `trainer.step()` after `loss.backward()`, or recompute the forward "
                     "after it: the optimizer step inside it (`self.optimizer.step()`) updated "
                     "parameters that backward still needs")
    assert report.endswith(
        f"SUMMARY: gradguard: saved-tensor-mutated {HERE}:{line_of('STEP')} in "
        "test_an_optimizer_step_inside_a_library_names_the_users_call (Tensor.add_)")
    assert c.to_dict()["mutation"]["stack"][0]["library"] is True
    assert "library" not in c.to_dict()["mutation"]["stack"][1]
    again = gradguard.Conflict.from_dict(c.to_dict())
    assert again.write.user_site == c.write.user_site and again.summary() == c.summary()


def test_an_ema_copy_inside_a_library_says_move_the_call(fakelib):
    model = torch.nn.Linear(3, 3)
    ema = fakelib.EMA(model)
    x = torch.randn(2, 3, requires_grad=True)
    with gradguard.detect(on_conflict="record") as s:
        loss = (x @ model.weight).sum()  # SAVE-EMA
        ema.copy_to(model)  # EMA
        with pytest.raises(gradguard.InplaceConflictError):
            loss.backward()
    (c,) = s.conflicts
    assert c.summary() == (f"saved-tensor-mutated {HERE}:{line_of('EMA')} in "
                           "test_an_ema_copy_inside_a_library_says_move_the_call (Tensor.copy_)")
    assert c.fix == ("move `ema.copy_to(model)` after `loss.backward()`, or recompute the "
                     "forward after it: the library code it calls (`p.copy_(s)`) writes "
                     "(`Tensor.copy_`) into a tensor that backward still needs")


def test_load_state_dict_says_move_the_call_not_use_an_out_of_place_copy():
    model = torch.nn.Linear(3, 3)
    state = {k: v + 1 for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, requires_grad=True)
    with gradguard.detect(on_conflict="record") as s:
        loss = torch.tanh(model(x)).sum()
        model.load_state_dict(state)  # LOAD
        with pytest.raises(gradguard.InplaceConflictError):
            loss.backward()
    assert s.conflicts
    for c in s.conflicts:
        assert c.write.user_site.line == line_of("LOAD")
        assert c.fix == ("move `model.load_state_dict(state)` after `loss.backward()`, or "
                         "recompute the forward after it: it copies new values "
                         "(`Tensor.copy_`) into a tensor that backward still needs")


def test_a_deep_library_save_keeps_the_users_line(fakelib):
    w = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(2, 3, requires_grad=True)
    with gradguard.detect(on_conflict="record") as s:
        y = fakelib.deep(x, w)  # DEEP
        y.data.mul_(2)  # DATA
        y.sum().backward()
    (c,) = s.conflicts
    stack = c.saved.stack
    assert stack[0].library and stack[0].line == lib_line(fakelib, "LIB-SAVE")
    assert (c.saved.user_site.file, c.saved.user_site.line) == (HERE, line_of("DEEP"))
    assert not stack[-1].library  # the user's line is kept after the library frames
    assert len(stack) == sites.SAVE_STACK + 1
    assert c.summary().startswith(f"saved-tensor-mutated {HERE}:{line_of('DATA')} in ")


def test_a_save_deep_inside_a_hugging_face_model_keeps_the_users_line():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 64, (2, 8))
    weight = model.transformer.h[1].attn.c_attn.weight
    with gradguard.detect(on_conflict="record") as s:
        loss = model(input_ids=ids, labels=ids).loss  # HF-FORWARD
        weight.data.mul_(2)  # HF-DATA
        loss.backward()
    (c,) = s.conflicts
    assert c.saved.stack[0].library and c.saved.stack[0].function == "Conv1D.forward"
    # ~40 frames of transformers and torch lie between that save and the user's line
    assert (c.saved.user_site.file, c.saved.user_site.line) == (HERE, line_of("HF-FORWARD"))
    assert c.tensor.name == "model.transformer.h.1.attn.c_attn.weight"
