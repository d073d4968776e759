"""`gradguard run`: the target runs as `python script.py` / `python -m module` would, the
report and the JSON come out at exit, and bad input is one line with exit code 2.

Most runs are in-process (`cli.main`), which goes through the same code as the console
script without paying ~3 s to import torch again; bad input runs as real subprocesses,
which fail before torch is imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from helpers import line_of

import gradguard
from gradguard._cli.main import main
from gradguard._cli.run import parse_env
from gradguard.errors import UsageError

# A training-step-sized program with a silent bug (a `.data` write into a saved tensor)
# when its first argument is "bug", and an exit code from its second.
SILENT = '''\
import sys
import torch


def step(x, bug):
    y = torch.tanh(x)  # SAVE
    if bug:
        y.data.mul_(2)  # WRITE
    y.sum().backward()


step(torch.randn(4, 3, requires_grad=True), sys.argv[1] == "bug")
sys.exit(int(sys.argv[2]))
'''

# What a target sees of the interpreter, dumped as JSON to the path in PROBE_OUT.
PROBE = '''\
import json, os, sys
json.dump({"argv": sys.argv, "path0": sys.path[0], "name": __name__,
           "file": __file__, "spec": __spec__ is None,
           "main": sys.modules["__main__"].__dict__ is globals()},
          open(os.environ["PROBE_OUT"], "w"))
'''


def gg(*argv: str) -> int:
    """`gradguard run ARGV` in-process; its exit code."""
    try:
        return main(["run", *argv])
    except SystemExit as exc:  # argparse's own errors
        return exc.code


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


# -- running the target like python does -------------------------------------------------
def test_script_sees_what_python_script_py_gives_it(tmp_path, monkeypatch):
    probe = write(tmp_path, "sub/probe.py", PROBE)
    monkeypatch.chdir(tmp_path)
    args = ["sub/probe.py", "a", "--json", "x", "-m", "y", "--exit-code", "3"]
    out = tmp_path / "probe.json"
    env = {**os.environ, "PROBE_OUT": str(out)}
    subprocess.run([sys.executable, *args], check=True, env=env, cwd=tmp_path)
    expected = json.loads(out.read_text())
    monkeypatch.setenv("PROBE_OUT", str(out))
    argv_before, path_before = sys.argv[:], sys.path[:]

    assert gg(*args) == 0  # --json, -m, --exit-code after the script are the script's
    assert json.loads(out.read_text()) == expected
    assert expected["argv"] == args and expected["path0"] == str(probe.parent)
    assert expected["file"] == str(probe) and expected["name"] == "__main__"
    assert (sys.argv, sys.path) == (argv_before, path_before)  # restored afterwards


@pytest.mark.parametrize("package_main", [False, True])
def test_dash_m_sees_what_python_dash_m_gives_it(tmp_path, monkeypatch, package_main):
    pkg = f"ggprobe_{package_main:d}"
    write(tmp_path, f"{pkg}/__init__.py", "")
    write(tmp_path, f"{pkg}/__main__.py" if package_main else f"{pkg}/tool.py", PROBE)
    target = pkg if package_main else f"{pkg}.tool"
    out = tmp_path / "probe.json"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROBE_OUT", str(out))
    subprocess.run([sys.executable, "-m", target, "--on-conflict", "raise"], check=True,
                   cwd=tmp_path)
    expected = json.loads(out.read_text())
    try:
        assert gg("-m", target, "--on-conflict", "raise") == 0
    finally:
        for name in [m for m in sys.modules if m.startswith(pkg)]:
            del sys.modules[name]
    assert json.loads(out.read_text()) == expected
    assert expected["argv"][1:] == ["--on-conflict", "raise"]
    assert expected["path0"] == str(tmp_path) and expected["name"] == "__main__"


@pytest.mark.parametrize("bug, script_code, options, expected", [
    ("ok", 0, [], 0),
    ("bug", 0, [], 1),  # conflicts found: --exit-code's default
    ("bug", 0, ["--exit-code", "0"], 0),
    ("bug", 0, ["--exit-code", "9"], 9),
    ("bug", 4, ["--exit-code", "9"], 4),  # the script's own non-zero code wins
    ("ok", 4, [], 4),
])
def test_exit_code(tmp_path, capsys, bug, script_code, options, expected):
    script = write(tmp_path, "silent.py", SILENT)
    assert gg(*options, str(script), bug, str(script_code)) == expected
    err = capsys.readouterr().err
    assert ("SUMMARY: gradguard: saved-tensor-mutated" in err) == (bug == "bug")
    assert ("gradguard: no in-place conflicts found" in err) == (bug == "ok")


def test_sys_exit_with_a_message_prints_it_and_exits_1(tmp_path, capsys):
    script = write(tmp_path, "bye.py", "import sys\nsys.exit('bye: no data')\n")
    assert gg(str(script)) == 1
    assert capsys.readouterr().err.splitlines()[0] == "bye: no data"


# -- the report ----------------------------------------------------------------------------
def test_silent_conflict_is_reported_at_exit_and_the_script_runs_on(tmp_path, capsys):
    script = write(tmp_path, "silent.py", SILENT + "print('after the bug')\n")
    write_line, save_line = line_of("WRITE", str(script)), line_of("SAVE", str(script))
    assert gg(str(script), "bug", "0") == 1
    out, err = capsys.readouterr()
    assert out == ""  # exit(0) before the print: sys.exit ends the script, not gradguard
    summary = f"SUMMARY: gradguard: saved-tensor-mutated {script}:{write_line} in step (Tensor.mul_)"
    streamed, *lines = err.splitlines()
    assert streamed == summary  # printed when the conflict was found, the report at exit
    assert lines[0] == "==== gradguard: saved-tensor-mutated [GGR101]"
    assert lines[-1] == summary
    sections = [line.split()[0] for line in lines if line[:1].isupper()]
    assert sections == ["TanhBackward0", "WRITE", "SAVED", "TENSOR", "ALIASING", "FIX",
                        "SUMMARY:"]
    assert f"    #0 {script}:{save_line} in step" in lines
    # the stacks end at the script's top level: no runpy, gradguard or pytest frames
    frames = [line for line in lines if line.startswith("    #")]
    assert frames == [f"    #0 {script}:{write_line} in step", f"    #1 {script}:12 in <module>",
                      f"    #0 {script}:{save_line} in step", f"    #1 {script}:12 in <module>"]
    assert "TENSOR f32[4,3] cpu v0, produced by tanh (TanhBackward0)" in lines
    assert "\x1b[" not in err  # colour only on a terminal


def test_color_always(tmp_path, capsys):
    script = write(tmp_path, "silent.py", SILENT)
    assert gg("--color", "always", str(script), "bug", "0") == 1
    streamed, report = capsys.readouterr().err.split("\n", 1)
    assert streamed.startswith("\x1b[2mSUMMARY: gradguard: ") and streamed.endswith("\x1b[0m")
    assert report.startswith("\x1b[31m\x1b[1m==== gradguard: saved-tensor-mutated [GGR101]\x1b[0m")


def test_fatal_conflict_keeps_the_scripts_traceback_then_reports_once(tmp_path, capsys):
    script = write(tmp_path, "fatal.py", '''\
        import torch


        def step(x):
            h = torch.sigmoid(x)  # SAVE
            h.relu_()  # WRITE
            h.sum().backward()  # BACKWARD


        step(torch.randn(3, requires_grad=True))
        print("not reached")
    ''')
    assert gg(str(script)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    trace, report = err.split("(gradguard: the report follows)\n")
    assert trace.startswith("Traceback (most recent call last):\n")
    assert f'File "{script}", line {line_of("BACKWARD", str(script))}, in step' in trace
    assert trace.splitlines()[-1].startswith(
        "gradguard.InplaceConflictError: one of the variables needed for gradient "
        "computation has been modified by an inplace operation")
    assert "gradguard" not in "".join(line for line in trace.splitlines()
                                      if line.startswith("  File"))  # our frames trimmed
    assert "runpy" not in trace
    assert report.count("==== gradguard:") == 1
    assert report.rstrip().endswith(f"fatal.py:{line_of('WRITE', str(script))} in step "
                                    "(Tensor.relu_)")


def test_script_exception_keeps_its_traceback(tmp_path, capsys):
    script = write(tmp_path, "boom.py", '''\
        def load():
            raise FileNotFoundError("data/train.bin")  # RAISE


        load()
    ''')
    python = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert gg(str(script)) == python.returncode == 1
    err = capsys.readouterr().err
    assert err == python.stderr + "gradguard: no in-place conflicts found\n"
    assert f'  File "{script}", line {line_of("RAISE", str(script))}, in load\n' in err


def test_an_error_gradguard_cannot_explain_still_prints_as_python_prints_it(tmp_path, capsys):
    script = write(tmp_path, "nostr.py", '''\
        class Odd(RuntimeError):
            def __str__(self):
                raise ValueError("no str")


        raise Odd()
    ''')
    python = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert gg(str(script)) == python.returncode == 1
    err = capsys.readouterr().err
    assert err.startswith(python.stderr)  # the program's own traceback, unchanged
    assert "could not check the explanation of an error leaving the session" in err


def test_pytorch_own_error_keeps_its_message_and_gets_a_note(tmp_path, capsys):
    script = write(tmp_path, "leaf.py", '''\
        import torch
        w = torch.ones(3, requires_grad=True)
        w += 1  # WRITE
    ''')
    assert gg(str(script)) == 1
    err = capsys.readouterr().err
    assert ("RuntimeError: a leaf Variable that requires grad is being used in an in-place "
            "operation.\n\n==== gradguard: leaf-inplace [GGR201]") in err
    assert err.rstrip().endswith(f"leaf.py:{line_of('WRITE', str(script))} in <module> (+=)")


def test_json_report_schema(tmp_path, capsys):
    script = write(tmp_path, "silent.py", SILENT)
    out = tmp_path / "reports" / "report.json"
    out.parent.mkdir()
    assert gg("--json", str(out), str(script), "bug", "0") == 1
    data = json.loads(out.read_text())
    assert set(data) == {"version", "conflicts", "coverage_gaps", "summary", "run"}
    assert data["version"] == 1 and data["coverage_gaps"] == []
    assert data["summary"] == {"conflicts": 1, "by_kind": {"saved-tensor-mutated": 1}}
    assert data["run"] == {"target": str(script), "file": str(script), "args": ["bug", "0"],
                           "exit_code": 1, "rank": None, "world_size": None}
    (c,) = data["conflicts"]
    assert set(c) == {"kind", "code", "title", "mutation", "saved", "tensor", "overlap",
                      "aliasing", "fix", "detail", "repaired", "writes"}
    assert (c["kind"], c["code"], c["overlap"]) == ("saved-tensor-mutated", "GGR101", True)
    assert c["mutation"] == {
        "op": "Tensor.mul_", "via": None, "alias": ".data", "file": str(script),
        "line": line_of("WRITE", str(script)), "function": "step",
        "stack": [
            {"file": str(script), "line": line_of("WRITE", str(script)), "function": "step",
             "source": "y.data.mul_(2)  # WRITE"},
            {"file": str(script), "line": 12, "function": "<module>",
             "source": 'step(torch.randn(4, 3, requires_grad=True), sys.argv[1] == "bug")'},
        ]}
    assert {k: v for k, v in c["saved"].items() if k != "stack"} == {
        "op": "tanh", "node": "TanhBackward0", "file": str(script),
        "line": line_of("SAVE", str(script)), "function": "step"}
    assert c["tensor"] == {"dtype": "torch.float32", "shape": [4, 3], "device": "cpu",
                           "version_saved": 0, "version_now": 0, "name": None,
                           "produced_by": "TanhBackward0", "is_parameter": False}
    assert c["aliasing"] == {"same_storage": True, "written_bytes": [0, 48],
                             "saved_bytes": [0, 48], "whole_tensor_write": False}
    assert "`.data`" in c["fix"]


def test_under_torchrun_env_every_line_is_prefixed_and_json_is_per_rank(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    script = write(tmp_path, "silent.py", SILENT)
    assert gg("--json", str(tmp_path / "report.json"), str(script), "bug", "0") == 1
    err = capsys.readouterr().err
    assert all(line.startswith("[rank1]") for line in err.splitlines())
    assert err.splitlines()[0].startswith("[rank1] SUMMARY: gradguard: saved-tensor-mutated ")
    assert err.splitlines()[1] == "[rank1] ==== gradguard: saved-tensor-mutated [GGR101]"
    assert not (tmp_path / "report.json").exists()
    data = json.loads((tmp_path / "report.rank1.json").read_text())
    assert (data["run"]["rank"], data["run"]["world_size"]) == (1, 2)
    assert len(data["conflicts"]) == 1


def test_options_reach_the_session(tmp_path, capsys):
    script = write(tmp_path, "np.py", '''\
        import torch


        def step(x):
            y = torch.exp(x)  # SAVE
            y.detach().numpy()[0] = 7.0  # WRITE: outside PyTorch
            y.sum().backward()


        step(torch.randn(3, requires_grad=True))
    ''')
    assert gg(str(script)) == 0  # a NumPy write is invisible without --checksum
    capsys.readouterr()
    report = tmp_path / "r.json"
    assert gg("--checksum", "--max-stack", "1", "--json", str(report), str(script)) == 1
    (c,) = json.loads(report.read_text())["conflicts"]
    assert c["code"] == "GGR102"
    assert [f["line"] for f in c["saved"]["stack"]] == [line_of("SAVE", str(script))]


def test_warn_mode_warns_at_the_scripts_line(tmp_path, capsys):
    script = write(tmp_path, "silent.py", SILENT)
    with pytest.warns(gradguard.InplaceConflictWarning) as record:
        assert gg("--on-conflict", "warn", str(script), "bug", "0") == 1
    assert (record[0].filename, record[0].lineno) == (str(script), line_of("WRITE", str(script)))
    assert "SUMMARY: gradguard:" in capsys.readouterr().err


# -- GRADGUARD_OPTIONS ----------------------------------------------------------------------
def test_options_from_the_environment_and_the_command_line_wins(tmp_path, capsys, monkeypatch):
    script = write(tmp_path, "silent.py", SILENT)
    report = tmp_path / "env.json"
    monkeypatch.setenv("GRADGUARD_OPTIONS", f"exit_code=5:json={report}:max-stack=1")
    assert gg(str(script), "bug", "0") == 5
    (c,) = json.loads(report.read_text())["conflicts"]
    assert len(c["mutation"]["stack"]) == 1
    assert gg("--exit-code", "6", str(script), "bug", "0") == 6


def test_environment_help_lists_every_option(capsys, monkeypatch):
    monkeypatch.setenv("GRADGUARD_OPTIONS", "help=1")
    assert gg() == 0
    err = capsys.readouterr().err
    for name in ("on_conflict=record", "json=", "checksum=0", "max_stack=8", "exit_code=1",
                 "color=auto"):
        assert f"\n  {name}\n" in err


@pytest.mark.parametrize("text, message", [
    ("verbose=1", "GRADGUARD_OPTIONS: unknown option 'verbose'"),
    ("on_conflict=explode", "GRADGUARD_OPTIONS: on_conflict: expected one of raise, warn, "
                            "record, not 'explode'"),
    ("max_stack=0", "GRADGUARD_OPTIONS: max_stack: expected an integer 1 or more, not 0"),
    ("json", "GRADGUARD_OPTIONS: json needs a value (json=...)"),
])
def test_bad_environment_options(text, message):
    with pytest.raises(UsageError) as err:
        parse_env(text)
    assert str(err.value).startswith(message)


# -- bad input: one line, exit 2, no traceback (real subprocesses; torch is never imported) --
@pytest.mark.parametrize("case", ["missing", "syntax", "option", "json-dir", "json-missing-dir",
                                  "max-stack", "module", "nothing", "env"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    script = write(tmp_path, "ok.py", "print('ran')\n")
    bad = write(tmp_path, "bad.py", "x = 1\ndef f(:\n    pass\n")
    env = {**os.environ, "GRADGUARD_OPTIONS": "colour=1" if case == "env" else ""}
    argv, expected = {
        "missing": ([str(tmp_path / "nope.py")], "can't open file"),
        "syntax": ([str(bad)], f"{bad}:2: SyntaxError: "),
        "option": (["--on-conflit", "raise", str(script)], "unrecognized arguments: --on-conflit"),
        "json-dir": (["--json", str(tmp_path), str(script)], "it is a directory"),
        "json-missing-dir": (["--json", str(tmp_path / "no" / "r.json"), str(script)],
                             "cannot write the JSON report to"),
        "max-stack": (["--max-stack", "-1", str(script)], "argument --max-stack: expected an"),
        "module": (["-m", "no_such_module_gg"], "no module named 'no_such_module_gg'"),
        "nothing": ([], "nothing to run"),
        "env": ([str(script)], "GRADGUARD_OPTIONS: unknown option 'colour'"),
    }[case]
    proc = subprocess.run([sys.executable, "-m", "gradguard", "run", *argv], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""  # the script never ran
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gradguard: error: ")
    assert expected in proc.stderr
    assert "torch" not in proc.stderr


def test_gradguard_help_lists_run():
    proc = subprocess.run([sys.executable, "-m", "gradguard", "run", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "gradguard run [options] -m module [args ...]" in proc.stdout
    assert "GRADGUARD_OPTIONS" in proc.stdout and "--exit-code N" in proc.stdout


def test_no_warnings_from_a_clean_run(tmp_path, capsys):
    script = write(tmp_path, "silent.py", SILENT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gg(str(script), "ok", "0") == 0
    assert capsys.readouterr().err == "gradguard: no in-place conflicts found\n"
