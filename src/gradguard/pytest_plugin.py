"""pytest plugin (entry point ``pytest11``): run tests under `gradguard.detect()` and fail
every test that produced an in-place conflict, with gradguard's report in the failure.

Turned on by ``pytest --gradguard`` or the ini key ``gradguard = true`` (``--no-gradguard``
overrides the ini key), and per test by the ``gradguard`` marker or by requesting the
``gradguard`` fixture. When it is off it does not import torch and changes nothing.

* ``@pytest.mark.gradguard(enabled=True, on_conflict="fail", checksum=False,
  when="backward", max_stack=8)``. ``on_conflict``: ``"fail"`` (record, then fail the test
  at its end, so a test that catches the error still fails), ``"raise"`` (raise
  `InplaceConflictError` at the backward that needs the damaged tensor, and fail),
  ``"warn"`` or ``"record"`` (do not fail; inspect the ``gradguard`` fixture).
  ``enabled=False`` turns it off for the test.
* The ``gradguard`` fixture is the test's `DetectSession` (``.conflicts``, ``.report()``).
* ``@pytest.mark.gradguard_readonly("model", "data.weight", checksum=False)``: run the
  test's body (the call phase, after its fixtures are built) under
  `gradguard.readonly()` of what each argument names: a fixture the test requests,
  optionally followed by attributes (``"model.fc.weight"``); a tensor, a module (its
  parameters and buffers) or an iterable of them. A write to any of them fails the test
  with `ReadOnlyTensorError` at the writing line. Independent of ``--gradguard``.
* The session covers the setup and call phases (fixtures that build graphs included),
  not teardown.
* When on from the command line or ini, the write patches are installed, and a session
  entered, in ``pytest_load_initial_conftests`` (``tryfirst``): before the first conftest
  module is imported, so functions conftests alias at import time (``MUL_ =
  torch.Tensor.mul_``) are the intercepting ones, and conflicts in code that runs while
  conftests and test modules are imported are reported (they fail the run). That session
  ends when collection finishes.
"""
from __future__ import annotations

import os
from typing import Any, Generator, NoReturn, Optional

import _pytest
import pluggy
import pytest

_MODES = ("fail", "raise", "warn", "record")
_RUNNER_DIRS = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (_pytest, pluggy))
_DETECT_OPTIONS = ("checksum", "when", "max_stack")
_MARKER_HELP = (
    "gradguard(enabled=True, on_conflict='fail', checksum=False, when='backward', "
    "max_stack=8): run the test under gradguard.detect(); on_conflict is 'fail' (fail the "
    "test at its end), 'raise' (raise at the backward), 'warn' or 'record' (do not fail)")


_READONLY_HELP = (
    "gradguard_readonly(*names, checksum=False): run the test body under "
    "gradguard.readonly() of the named fixtures (or fixture.attribute paths): tensors, "
    "modules (their parameters and buffers) or iterables of them")


class _RunState:
    """Per pytest run (a stash on the config: pytester runs nest in one process)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.import_session: Any = None  # entered before conftests are imported
        self.import_conflicts: list = []
        self.failed_tests: list[str] = []


_RUN = pytest.StashKey[_RunState]()
_SESSION = pytest.StashKey[Any]()  # the test's DetectSession
_MODE = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradguard", "gradguard: in-place autograd conflicts")
    group.addoption("--gradguard", action="store_true", dest="gradguard", default=None,
                    help="run every test under gradguard.detect() and fail tests that "
                         "produce an in-place autograd conflict")
    group.addoption("--no-gradguard", action="store_false", dest="gradguard",
                    help="turn the gradguard plugin off (overrides the ini key)")
    parser.addini("gradguard", type="bool", default=False,
                  help="run every test under gradguard.detect() (like --gradguard)")


def _enabled(config: pytest.Config) -> bool:
    option = getattr(config.known_args_namespace, "gradguard", None)
    if option is None:
        option = config.getoption("gradguard", default=None)
    return bool(config.getini("gradguard")) if option is None else bool(option)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    state = _RunState(_enabled(early_config))
    early_config.stash[_RUN] = state
    if state.enabled:
        from gradguard._detect.session import DetectSession

        state.import_session = DetectSession(on_conflict="record")
        state.import_session.__enter__()  # installs the write patches too


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)
    config.addinivalue_line("markers", _READONLY_HELP)
    if _RUN not in config.stash:  # not started from the command line (e.g. pytest.main)
        config.stash[_RUN] = _RunState(_enabled(config))


def _end_import_session(config: pytest.Config) -> None:
    state = config.stash.get(_RUN, None)
    if state is not None and state.import_session is not None:
        session, state.import_session = state.import_session, None
        session.__exit__(None, None, None)
        _trim_stacks(session.conflicts)
        state.import_conflicts = session.conflicts  # backwards later may still add some


def pytest_collection_finish(session: pytest.Session) -> None:
    _end_import_session(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    _end_import_session(config)  # collection was interrupted


def _usage(message: str) -> NoReturn:
    """Fail the current phase with ``message`` and no traceback (a usage error)."""
    pytest.fail(message, pytrace=False)


def _options(item: pytest.Item) -> Optional[tuple[str, dict[str, Any]]]:
    """(mode, detect() keyword arguments) for this test, or None when it is off."""
    marker = item.get_closest_marker("gradguard")
    kwargs = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        _usage(f"{item.nodeid}: @pytest.mark.gradguard takes keyword "
                                f"arguments only, e.g. gradguard(on_conflict='record')")
    enabled = kwargs.pop("enabled", None)
    if enabled is None:
        enabled = (item.config.stash[_RUN].enabled or marker is not None
                   or "gradguard" in getattr(item, "fixturenames", ()))
    if not enabled:
        return None
    mode = kwargs.pop("on_conflict", "fail")
    if mode not in _MODES:
        _usage(f"{item.nodeid}: gradguard on_conflict must be one of "
                                f"{', '.join(map(repr, _MODES))}, not {mode!r}")
    unknown = sorted(set(kwargs) - set(_DETECT_OPTIONS))
    if unknown:
        _usage(f"{item.nodeid}: unknown gradguard marker option(s) "
                                f"{', '.join(unknown)}; known: enabled, on_conflict, "
                                f"{', '.join(_DETECT_OPTIONS)}")
    return mode, kwargs


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    options = _options(item)
    if options is None:
        return (yield)
    from gradguard._detect.session import DetectSession

    mode, kwargs = options
    try:
        session = DetectSession(on_conflict="raise" if mode == "raise" else
                                "warn" if mode == "warn" else "record", **kwargs)
    except ValueError as exc:
        _usage(f"{item.nodeid}: @pytest.mark.gradguard: {exc}")
    item.stash[_SESSION] = session
    item.stash[_MODE] = mode
    with session:
        return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    session = item.stash.get(_SESSION, None)
    if session is None:
        return (yield)
    try:
        with session:
            result = yield
    except BaseException:
        if session.conflicts:  # failed anyway (the conflict's own error, or another)
            _trim_stacks(session.conflicts)
            item.add_report_section("call", "gradguard", session.report())
        raise
    _trim_stacks(session.conflicts)
    if session.conflicts and item.stash[_MODE] in ("fail", "raise"):
        item.config.stash[_RUN].failed_tests.append(item.nodeid)
        n = len(session.conflicts)
        pytest.fail(f"gradguard: this test produced {n} in-place conflict{'s' * (n != 1)} "
                    f"(turn off with @pytest.mark.gradguard(enabled=False))\n\n"
                    f"{session.report()}", pytrace=False)
    return result


def _readonly_targets(item: pytest.Item, marker: Any) -> list[Any]:
    funcargs = getattr(item, "funcargs", {})
    if not marker.args:
        _usage(f"{item.nodeid}: @pytest.mark.gradguard_readonly needs the names of "
               "fixtures to make read-only, e.g. gradguard_readonly('model')")
    targets = []
    for spec in marker.args:
        if not isinstance(spec, str) or not spec:
            _usage(f"{item.nodeid}: gradguard_readonly takes fixture names (strings), "
                   f"not {spec!r}")
        fixture, *attrs = spec.split(".")
        if fixture not in funcargs:
            _usage(f"{item.nodeid}: gradguard_readonly({spec!r}): the test does not "
                   f"request a fixture {fixture!r}; add it to the test's arguments")
        value = funcargs[fixture]
        for i, attr in enumerate(attrs):
            try:
                value = getattr(value, attr)
            except AttributeError:
                _usage(f"{item.nodeid}: gradguard_readonly({spec!r}): "
                       f"{'.'.join([fixture, *attrs[:i]])} has no attribute {attr!r}")
        targets.append((spec, value))
    return targets


@pytest.hookimpl(wrapper=True, specname="pytest_runtest_call")
def pytest_runtest_call_readonly(item: pytest.Item) -> Generator[None, None, None]:
    marker = item.get_closest_marker("gradguard_readonly")
    if marker is None:
        return (yield)
    unknown = sorted(set(marker.kwargs) - {"checksum"})
    if unknown:
        _usage(f"{item.nodeid}: unknown gradguard_readonly option(s) {', '.join(unknown)}; "
               "known: checksum")
    from gradguard._readonly.session import ReadOnlySession, _flatten
    from gradguard.errors import UsageError

    sessions = []
    try:
        for spec, value in _readonly_targets(item, marker):
            try:
                tensors = _flatten([value])
            except UsageError as exc:
                _usage(f"{item.nodeid}: gradguard_readonly({spec!r}): {exc}")
            name = spec if isinstance(value, _tensor_type()) else None
            sessions.append(ReadOnlySession(tensors, name=name,
                                            checksum=bool(marker.kwargs.get("checksum"))))
        for session in sessions:
            session.start()
        result = yield
    finally:
        for session in reversed(sessions):
            session.release()
    return result


def _tensor_type() -> type:
    import torch

    return torch.Tensor


def _trim_stacks(conflicts: list) -> None:
    """Drop pytest's and pluggy's frames below the test from the conflicts' stacks."""
    for c in conflicts:
        for part in (c.write, c.saved):
            if part is None:
                continue
            for i, frame in enumerate(part.stack):
                if i and frame.file.startswith(_RUNNER_DIRS):
                    del part.stack[i:]
                    break


@pytest.fixture
def gradguard(request: pytest.FixtureRequest) -> Any:
    """The test's `gradguard.DetectSession`: ``.conflicts``, ``.report()``, ``.draw()``.
    Requesting it turns gradguard on for the test."""
    session = request.node.stash.get(_SESSION, None)
    if session is None:
        _usage(f"{request.node.nodeid}: the gradguard fixture needs "
                                "gradguard on for the test; remove enabled=False from its "
                                "@pytest.mark.gradguard marker")
    return session


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_RUN, None)
    if state is not None and state.import_conflicts and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    state = terminalreporter.config.stash.get(_RUN, None)
    if state is None:
        return
    if state.import_conflicts:
        from gradguard._explain.text import render_text

        terminalreporter.section("gradguard: conflicts while importing conftests and tests",
                                 sep="=", red=True)
        terminalreporter.line(render_text(state.import_conflicts))
    if state.failed_tests:
        n = len(state.failed_tests)
        terminalreporter.line(f"gradguard: {n} test{'s' * (n != 1)} produced in-place "
                              "conflicts", red=True)
