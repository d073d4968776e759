"""gradguard.xray(): what each backward node saved, the saved bytes over the step, which
writes were safe, which ops could have been in place; the CLI and its three outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import gradguard

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import models as M  # noqa: E402


def _node(data, name):
    found = [n for n in data["nodes"] if n["name"] == name]
    assert found, [n["name"] for n in data["nodes"]]
    return found[0]


def test_nodes_roles_bytes_and_peak():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 8)
    x = torch.randn(4, 3, requires_grad=True)
    with gradguard.xray() as xr:
        y = lin(x)                      # addmm saves x (an input) and the weight
        z = y.exp()                     # exp saves its output
        z.sum().backward()
    data = xr.to_dict()
    addmm = _node(data, "AddmmBackward0")
    roles = sorted((s["role"], tuple(s["shape"])) for s in addmm["saved"])
    assert roles == [("input", (4, 3)), ("parameter", (3, 8))]  # weight.t(), a view
    assert [s["parameter"] for s in addmm["saved"] if s["role"] == "parameter"] == ["lin.weight"]
    exp = _node(data, "ExpBackward0")
    assert [(s["role"], s["bytes"]) for s in exp["saved"]] == [("output", 4 * 8 * 4)]
    assert exp["line"].endswith(f"test_xray.py:{test_nodes_roles_bytes_and_peak.__code__.co_firstlineno + 6}")
    assert data["saved_bytes"] == 48 + 128 and data["peak_saved_bytes"] == 48 + 128
    assert data["timeline"][-1]["bytes"] == 0  # backward released everything
    assert data["backward_event"] is not None
    assert data["top_lines"][0]["bytes"] == 128


def test_safe_and_unsafe_writes():
    w = torch.randn(5, requires_grad=True)
    with gradguard.xray() as xr:
        a = w * 1.0
        b = a.sin()            # sin saves its input a
        c = torch.zeros(5)
        c.add_(1)              # nobody saved c: safe
        a.mul_(2)              # a is saved by sin: unsafe
        del b
    writes = xr.to_dict()["writes"]
    assert [(w["op"], w["safe"]) for w in writes] == [("Tensor.add_", True), ("Tensor.mul_", False)]
    assert writes[1]["overwrote"] == "SinBackward0" or "saved tensor" in writes[1]["overwrote"]


def test_could_be_inplace_candidates():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3)
    with gradguard.xray() as xr:
        h = lin(x)
        g = torch.relu(h * 3)      # h: saved by nobody, not used after -> mul_ could do
        del h
        e = g.exp()                # g is saved by relu (its output): exp's input is saved
        f = e * 2                  # e saved by exp (output): not a candidate
        f.sum().backward()
    cands = xr.to_dict()["could_be_inplace"]
    assert [(c["op"], c["inplace"], c["freed"]) for c in cands] == [
        ("Tensor.mul", "mul_", True), ("torch.relu", "relu_", True)]  # relu saves its output
    assert "h * 3" in cands[0]["source"]


def test_until_next_forward_records_one_step():
    work = M.build("mlp", size="tiny", seed=0)
    opt = torch.optim.SGD(work.model.parameters(), lr=0.1)
    with gradguard.xray(until="next-forward") as one:
        M.train_step(work, opt)
        M.train_step(work, opt)
    with gradguard.xray() as two:
        M.train_step(work, opt)
        M.train_step(work, opt)
    d1, d2 = one.to_dict(), two.to_dict()
    assert d2["saved_tensors"] == 2 * d1["saved_tensors"] > 0
    assert all(w["safe"] for w in d1["writes"]) and d1["writes"]  # SGD writes after backward
    # ReLU(inplace=True) in forward (its input saved by nobody), SGD's add_ after backward
    assert {(w["op"], w["phase"]) for w in d1["writes"]} == {
        ("torch.relu_", "forward"), ("Tensor.add_", "after backward")}


def test_bit_identical_training_and_no_session_left():
    def train(xr):
        work = M.build("transformer_encoder", size="tiny", seed=0)
        work.model.train()
        opt = torch.optim.AdamW(work.model.parameters(), lr=1e-3)
        torch.manual_seed(1)
        for _ in range(2):
            if xr:
                with gradguard.xray():
                    M.train_step(work, opt)
            else:
                M.train_step(work, opt)
        return [p.detach().clone() for p in work.model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(train(False), train(True)))


def test_gpt2_every_saved_activation_is_attributed():
    work = M.build("gpt2", size="tiny", seed=0)
    opt = torch.optim.AdamW(work.model.parameters(), lr=1e-4)
    with gradguard.xray() as xr:
        M.train_step(work, opt)
    data = xr.to_dict()
    assert data["saved_tensors"] > 50 and data["peak_saved_bytes"] > 0
    assert all(s["node"] is not None for s in data["saved"])
    assert {s["role"] for s in data["saved"]} == {"input", "output", "parameter"}
    assert all(s["parameter"].startswith("GPT2LMHeadModel.")
               for s in data["saved"] if s["role"] == "parameter")
    assert data["writes"] and all(w["safe"] for w in data["writes"])
    text = xr.report()
    assert "Top lines by saved bytes" in text and "MulBackward0" in text
    html = gradguard.XraySession.write_html(xr, os.devnull)
    assert html is not None


def test_bad_until():
    with pytest.raises(gradguard.UsageError):
        gradguard.xray(until="forever")


SCRIPT = """
import sys, torch
sys.path.insert(0, {bench!r})
import models as M
work = M.build("mlp", size="tiny", seed=0)
opt = torch.optim.SGD(work.model.parameters(), lr=0.1)
for _ in range(3):
    M.train_step(work, opt)
print("done")
"""


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
    return subprocess.run([sys.executable, "-m", "gradguard", "xray", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_text_json_html(tmp_path):
    (tmp_path / "train.py").write_text(SCRIPT.format(bench=os.path.join(ROOT, "benchmarks")))
    proc = _cli("--json", "x.json", "--html", "x.html", "train.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert "gradguard xray: one training step (from the first save" in proc.stderr
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["schema"] == "gradguard.xray/1" and data["nodes"] and data["timeline"]
    page = (tmp_path / "x.html").read_text()
    assert "<svg" in page and "peak" in page and "AddmmBackward0" in page


@pytest.mark.parametrize("args,message", [
    ((), "nothing to run"),
    (("missing.py",), "missing.py"),
    (("--html", "no/such/dir/x.html", "train.py"), "No such file or directory"),
    (("--top", "0", "train.py"), "--top"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, message):
    (tmp_path / "train.py").write_text("print(1)\n")
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradguard: error: ") and message in lines[0]
