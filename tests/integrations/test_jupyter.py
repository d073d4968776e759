"""`%load_ext gradguard` in a real Jupyter kernel, executed through nbclient: the buggy
cell's output is the HTML report naming its write and save lines, PyTorch's own error
keeps its traceback, and clean cells get nothing from gradguard. The terminal form is
checked with a real `ipython` process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from childenv import environ

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.slow

CLEAN = """\
import torch
x = torch.randn(3, requires_grad=True)
torch.tanh(x).sum().backward()
print("clean")"""

SILENT = """\
def step(x):
    y = torch.tanh(x)  # SAVE
    y.data.mul_(2)  # WRITE
    y.sum().backward()

step(torch.randn(4, 3, requires_grad=True))"""

FATAL = """\
h = torch.sigmoid(torch.randn(3, requires_grad=True))  # SAVE
h.relu_()  # WRITE
h.sum().backward()"""


def line_in(cell: str, marker: str) -> int:
    (n,) = [i for i, text in enumerate(cell.splitlines(), 1) if text.endswith(f"# {marker}")]
    return n


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec for this very interpreter, found first; nothing from the user's
    Jupyter or IPython configuration."""
    spec = tmp_path / "jupyter" / "kernels" / "gradguard-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gradguard test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    for name, value in environ().items():  # the kernel runs elsewhere
        monkeypatch.setenv(name, value)
    return "gradguard-test"


def run_notebook(cells, kernel_name, cwd):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=120,
                                     allow_errors=True, resources={"metadata": {"path": cwd}})
    client.execute()
    return [cell.outputs for cell in nb.cells]


def gradguard_outputs(outputs):
    return [o for o in outputs if o.output_type == "display_data"
            and "gradguard-report" in o.data.get("text/html", "")]


def test_notebook_cells_show_the_report_under_the_buggy_cells_only(kernel_env, tmp_path):
    cells = ["%load_ext gradguard", CLEAN, SILENT, FATAL, "%gradguard off", SILENT,
             "%%gradguard\n" + SILENT, "%gradguard on", CLEAN, "%gradguard protect", FATAL,
             "%gradguard sometimes"]
    out = run_notebook(cells, kernel_env, str(tmp_path))
    # clean cells, and the switches: nothing from gradguard
    assert out[0] == [] and out[4] == [] and out[7] == [] and out[9] == []
    for i in (1, 8):
        assert [(o.output_type, o.get("text")) for o in out[i]] == [("stream", "clean\n")]

    # the silent bug: the HTML report under the cell, naming its write and save lines
    (shown,) = gradguard_outputs(out[2])
    assert len(out[2]) == 1
    page = shown.data["text/html"]
    write, save = line_in(SILENT, "WRITE"), line_in(SILENT, "SAVE")
    assert '<section class="conflict" id="conflict-1" data-code="GGR101">' in page
    assert f'<tr class="hit" data-line="{write}"><td class="ln">{write}</td>' \
           "<td>    y.data.mul_(2)  # WRITE</td></tr>" in page
    assert f'<tr class="hit" data-line="{save}"><td class="ln">{save}</td>' \
           "<td>    y = torch.tanh(x)  # SAVE</td></tr>" in page
    assert "<svg" in page and "<h3>Picture</h3>" in page
    assert "<style>.gradguard-report {" in page and "\nbody {" not in page
    text = shown.data["text/plain"]
    assert f":{write} in step (Tensor.mul_)" in text.splitlines()[-1]

    # PyTorch's own error keeps its traceback; the report follows it
    error, report = out[3]
    assert error.output_type == "error" and error.ename == "InplaceConflictError"
    assert error.evalue.startswith("one of the variables needed for gradient computation "
                                   "has been modified by an inplace operation")
    assert any("h.sum().backward()" in line for line in error.traceback)
    assert gradguard_outputs([report]) and "Tensor.relu_" in report.data["text/plain"]

    assert out[5] == []  # %gradguard off
    (one_cell,) = gradguard_outputs(out[6])  # %%gradguard checks its cell anyway
    assert len(out[6]) == 1
    assert "<td>    y.data.mul_(2)  # WRITE</td>" in one_cell.data["text/html"]

    # protect: the fatal cell is repaired, runs through, and says so
    (repaired,) = gradguard_outputs(out[10])
    assert len(out[10]) == 1
    assert "repaired: gradguard.protect kept the saved bytes" in repaired.data["text/plain"]

    # bad input: IPython's one-line usage error, no traceback
    assert [(o.output_type, o.get("text")) for o in out[11]] == [
        ("stream", "UsageError: %gradguard: expected one of off, on, protect, not 'sometimes'\n")]


def test_terminal_ipython_prints_the_text_report(tmp_path):
    code = CLEAN + "\n" + SILENT
    env = environ(IPYTHONDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "IPython", "--quick", "--no-banner",
                           "--colors=NoColor", "--ext", "gradguard", "-c", code],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "clean"
    assert lines[1] == "==== gradguard: saved-tensor-mutated [GGR101]"
    write = CLEAN.count("\n") + 1 + line_in(SILENT, "WRITE")
    assert lines[-1].startswith("SUMMARY: gradguard: saved-tensor-mutated ")
    assert lines[-1].endswith(f":{write} in step (Tensor.mul_)")
    assert "<" not in proc.stdout.replace("<module>", "").replace("<ipython-input", "")
