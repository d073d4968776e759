"""The integrations import without their frameworks: each class is built on first use,
and without the framework that use is a one-line ImportError."""
from __future__ import annotations

import subprocess
import sys

from childenv import environ

FRAMEWORKS = ("torch", "lightning", "pytorch_lightning", "transformers", "IPython")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ(), timeout=120)


def test_importing_the_integrations_imports_no_framework():
    proc = python("import sys\n"
                  "import gradguard.integrations.lightning, gradguard.integrations.huggingface\n"
                  "import gradguard.integrations.ipython, gradguard._cli.children\n"
                  f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    assert proc.stdout == "[]\n", proc.stderr


def test_without_the_framework_the_class_says_what_to_install():
    proc = python("import sys\n"
                  "for m in ('lightning', 'lightning.pytorch', 'pytorch_lightning', 'transformers'):\n"
                  "    sys.modules[m] = None  # as if not installed\n"
                  "for mod in ('lightning', 'huggingface'):\n"
                  "    try:\n"
                  "        __import__(f'gradguard.integrations.{mod}', fromlist=['_']).GradguardCallback\n"
                  "    except ImportError as exc:\n"
                  "        print(exc)\n")
    assert proc.stdout.splitlines() == [
        "GradguardCallback needs Lightning: pip install lightning (or pytorch-lightning)",
        "GradguardCallback needs transformers: pip install transformers"], proc.stderr
