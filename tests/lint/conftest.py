import sys
from pathlib import Path

import pytest

# regen_fixtures.py is a helper script, not a test module
collect_ignore = ["regen_fixtures.py", "fixtures"]
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _no_leftover_sessions():
    """Overrides the suite-wide fixture of tests/conftest.py for the lint tests: they
    never start a runtime session, and its gc.collect() before every test (with torch
    loaded) was most of their run time (71 s -> 11 s for tests/lint here)."""
    yield
