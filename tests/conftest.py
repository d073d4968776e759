import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _no_leftover_sessions():
    """Every test must leave gradguard inactive: no session, no active interception. Graphs an
    earlier test left in reference cycles (e.g. held by a caught exception's traceback)
    are collected first, so registry counts start from zero."""
    import gc

    gc.collect()
    yield
    from gradguard._core import intercept
    from gradguard._core.runtime import runtime

    assert not runtime.sessions, "a gradguard session leaked out of the test"
    assert not intercept.active(), "write interception left active"


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture
def example_modules(monkeypatch):
    """examples/ importable (as when a script there runs), and the example modules the test
    imported forgotten afterwards, so the next run imports them afresh."""
    monkeypatch.syspath_prepend(EXAMPLES)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        if os.path.dirname(os.path.abspath(getattr(module, "__file__", None) or "")) == EXAMPLES:
            del sys.modules[name]
