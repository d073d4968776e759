"""Packaging beyond pyproject.toml: ship ``gradguard_subprocess.pth`` at the root of
site-packages, where Python runs .pth lines at start-up, for a normal (``pip install .``)
and an editable (``pip install -e .``) install alike. The line does nothing unless
``gradguard run`` exported its options to child processes (GRADGUARD_SUBPROCESS, see
src/gradguard/_cli/children.py). coverage.py and pytest-cov ship their
subprocess hooks the same way."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = os.path.join("src", "gradguard_subprocess.pth")


class build_py_with_pth(build_py):
    """build_py, plus the .pth at the root of the wheel (which is site-packages)."""

    def run(self):
        super().run()
        if not self.editable_mode:
            self.copy_file(PTH, os.path.join(self.build_lib, os.path.basename(PTH)),
                           preserve_mode=0)


class editable_wheel_with_pth(editable_wheel):
    """The editable wheel holds no package files, only what is written to its unpacked
    directory: put the .pth there."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        self.copy_file(PTH, os.path.join(unpacked_wheel, os.path.basename(PTH)),
                       preserve_mode=0)
        return result


setup(cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth})
