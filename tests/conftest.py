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
