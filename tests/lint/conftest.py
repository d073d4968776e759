import sys
from pathlib import Path

# regen_fixtures.py is a helper script, not a test module
collect_ignore = ["regen_fixtures.py", "fixtures"]
sys.path.insert(0, str(Path(__file__).parent))
