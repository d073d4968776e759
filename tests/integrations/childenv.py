"""The environment for a child process a test starts (a script, a launcher, a kernel)."""
from __future__ import annotations

import os

from gradguard._cli.children import ENV_VAR


def environ(**extra: str) -> dict[str, str]:
    """This environment, one thread per process, no export from an enclosing `gradguard
    run`, and PYTHONPATH made absolute (children run in other directories)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop(ENV_VAR, None)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p)
                                            for p in env["PYTHONPATH"].split(os.pathsep))
    return env
