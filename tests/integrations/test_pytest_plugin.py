"""The pytest plugin (``pytest11`` entry point ``gradguard``), run through ``pytester``:
in-process where it can be, in a fresh interpreter where the point is what happens
before torch is patched (conftest imports)."""
from __future__ import annotations

import subprocess
import sys

import numpy  # noqa: F401
import pytest
import torch  # noqa: F401

import gradguard._detect.session  # noqa: F401
import gradguard._explain.text  # noqa: F401

pytest_plugins = ["pytester"]
# In-process runs drop the modules they imported when they end; torch cannot be imported
# twice in one process, so everything the inner runs import heavily is imported here first.

SILENT_BUG = """
import torch

def test_silent_data_write():
    x = torch.randn(3, requires_grad=True)
    y = torch.tanh(x)  # SAVE
    y.data.mul_(2)  # WRITE
    y.sum().backward()

def test_clean():
    x = torch.randn(3, requires_grad=True)
    torch.tanh(x).sum().backward()
"""


def _line(source: str, marker: str) -> int:
    """Line of ``# marker`` in ``source`` as pytester writes it (leading newline dropped)."""
    lines = source.strip("\n").splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.endswith(f"# {marker}"))


def test_flag_fails_the_test_that_produced_a_conflict_with_the_report(pytester):
    pytester.makepyfile(test_models=SILENT_BUG)
    off = pytester.runpytest()
    off.assert_outcomes(passed=2)  # off: nothing changes
    on = pytester.runpytest("--gradguard")
    on.assert_outcomes(failed=1, passed=1)
    out = on.stdout.str()
    on.stdout.fnmatch_lines([
        "*_ test_silent_data_write _*",
        "gradguard: this test produced 1 in-place conflict (turn off with "
        "@pytest.mark.gradguard(enabled=False))",
        "==== gradguard: saved-tensor-mutated [GGR101]",
        "WRITE Tensor.mul_  (through .data)",
        f"    #0 */test_models.py:{_line(SILENT_BUG, 'WRITE')} in test_silent_data_write",
        "         y.data.mul_(2)  # WRITE",
        "SAVED by tanh for backward node TanhBackward0",
        f"    #0 */test_models.py:{_line(SILENT_BUG, 'SAVE')} in test_silent_data_write",
        f"SUMMARY: gradguard: saved-tensor-mutated */test_models.py:{_line(SILENT_BUG, 'WRITE')} "
        "in test_silent_data_write*",
        "gradguard: 1 test produced in-place conflicts",
    ])
    assert "_pytest" not in out.split("WRITE Tensor.mul_")[1].split("TENSOR")[0]


def test_ini_key_turns_it_on_and_no_gradguard_turns_it_off(pytester):
    pytester.makepyfile(test_models=SILENT_BUG)
    pytester.makeini("[pytest]\ngradguard = true\n")
    pytester.runpytest().assert_outcomes(failed=1, passed=1)
    pytester.runpytest("--no-gradguard").assert_outcomes(passed=2)


def test_marker_options_and_the_fixture(pytester):
    pytester.makepyfile(test_marked="""
        import numpy as np
        import pytest
        import torch
        from gradguard import InplaceConflictError

        def _silent_bug():
            x = torch.randn(3, requires_grad=True)
            y = torch.tanh(x)
            y.data.mul_(2)
            y.sum().backward()

        @pytest.mark.gradguard(on_conflict="record")
        def test_record_lets_the_test_inspect(gradguard):
            _silent_bug()
            assert [c.code for c in gradguard.conflicts] == ["GGR101"]

        def test_fixture_alone_turns_it_on(gradguard):
            assert gradguard.conflicts == []
            _silent_bug()
            assert len(gradguard.conflicts) == 1  # and the test fails at its end

        @pytest.mark.gradguard(enabled=False)
        def test_disabled():
            _silent_bug()

        @pytest.mark.gradguard(on_conflict="raise")
        def test_raise_stops_at_the_backward():
            _silent_bug()  # raises InplaceConflictError inside, at the backward

        @pytest.mark.gradguard(on_conflict="warn")
        def test_warn_does_not_fail():
            with pytest.warns(UserWarning, match="saved-tensor-mutated"):
                _silent_bug()

        @pytest.mark.gradguard(checksum=True)
        def test_checksum_catches_a_numpy_write():
            x = torch.randn(3, requires_grad=True)
            y = x.exp()
            y.detach().numpy()[:] = 0.0
            y.sum().backward()

        @pytest.mark.gradguard(checksum=True)
        def test_caught_stock_error_still_fails():
            x = torch.randn(3, requires_grad=True)
            y = x.exp()
            y.add_(1)
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                y.sum().backward()

        @pytest.mark.gradguard(on_conflict="explode")
        def test_bad_mode():
            pass

        @pytest.mark.gradguard(colour="red")
        def test_unknown_option():
            pass

        @pytest.mark.gradguard(max_stack=0)
        def test_bad_detect_option():
            pass
    """)
    recorder = pytester.inline_run()  # no --gradguard: markers and the fixture suffice
    outcome = {}
    for r in recorder.getreports("pytest_runtest_logreport"):
        name = r.nodeid.split("::")[-1]
        if r.when == "call" or (r.when == "setup" and r.failed):
            outcome[name] = ("error" if r.when == "setup" else r.outcome, r.longreprtext)
    assert {n: o for n, (o, _) in outcome.items()} == {
        "test_record_lets_the_test_inspect": "passed",
        "test_fixture_alone_turns_it_on": "failed",
        "test_disabled": "passed",
        "test_raise_stops_at_the_backward": "failed",
        "test_warn_does_not_fail": "passed",
        "test_checksum_catches_a_numpy_write": "failed",
        "test_caught_stock_error_still_fails": "failed",
        "test_bad_mode": "error",
        "test_unknown_option": "error",
        "test_bad_detect_option": "error",
    }
    produced = "gradguard: this test produced 1 in-place conflict"
    assert outcome["test_fixture_alone_turns_it_on"][1].startswith(produced)
    assert "[GGR102]" in outcome["test_checksum_catches_a_numpy_write"][1]
    assert outcome["test_caught_stock_error_still_fails"][1].startswith(produced)
    raised = outcome["test_raise_stops_at_the_backward"][1]
    assert raised.rstrip().endswith(": InplaceConflictError") and "E       " in raised
    assert "in _silent_bug" in raised
    assert outcome["test_bad_mode"][1].endswith(
        "on_conflict must be one of 'fail', 'raise', 'warn', 'record', not 'explode'")
    assert "unknown gradguard marker option(s) colour" in outcome["test_unknown_option"][1]
    assert "max_stack must be a positive int, not 0" in outcome["test_bad_detect_option"][1]


def test_markers_are_registered_for_strict_markers(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.gradguard(enabled=False)
        def test_x():
            pass
    """)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)
    assert "gradguard(enabled=True, on_conflict='fail'" in pytester.runpytest(
        "--markers").stdout.str()


CONFTEST = """
import torch

MUL_ = torch.Tensor.mul_  # taken at import time: must already be gradguard's wrapper

x = torch.randn(3, requires_grad=True)
y = torch.sigmoid(x)
y.data.zero_()  # IMPORT-WRITE
y.sum().backward()
"""

ALIAS_TEST = """
import torch
from conftest import MUL_

def test_write_through_an_alias_taken_at_import():
    x = torch.randn(3, requires_grad=True)
    y = torch.tanh(x)
    MUL_(y.data, 2)
    y.sum().backward()
"""


def test_installed_before_conftest_imports(pytester):
    # A fresh interpreter: in this one torch's methods were patched long ago.
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_alias=ALIAS_TEST)
    result = pytester.runpytest_subprocess("--gradguard")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_write_through_an_alias_taken_at_import _*",
        "gradguard: this test produced 1 in-place conflict*",
        "WRITE Tensor.mul_  (through .data)",
        "         MUL_(y.data, 2)",
        "*= gradguard: conflicts while importing conftests and tests =*",
        "==== gradguard: saved-tensor-mutated [GGR101]",
        "WRITE Tensor.zero_  (through .data)",
        f"    #0 */conftest.py:{_line(CONFTEST, 'IMPORT-WRITE')} in <module>",
    ])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_import_time_conflict_fails_a_run_whose_tests_pass(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--gradguard")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert f"conftest.py:{_line(CONFTEST, 'IMPORT-WRITE')} in <module>" in result.stdout.str()
    assert pytester.runpytest().ret == pytest.ExitCode.OK


def test_plugin_imports_nothing_heavy_when_off():
    code = ("import sys, gradguard.pytest_plugin; "
            "print(sorted(m for m in ('torch', 'gradguard._detect.session') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
