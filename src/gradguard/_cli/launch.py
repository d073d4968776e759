"""Run a script or module the way ``python script.py`` / ``python -m module`` would.

`Target.resolve` checks the target before anything runs (missing file, syntax error,
unknown module: a `UsageError`, so the CLI prints one line and exits 2). `Target.run`
then executes it with ``sys.argv``, ``sys.path[0]`` and ``__main__`` set as Python sets
them, and returns the exit code Python would: 0, the code of a ``SystemExit``, or 1 after
printing the traceback of an uncaught exception (through ``sys.excepthook``, with
gradguard's and runpy's frames trimmed away). ``sys.argv`` and ``sys.path`` are restored
afterwards, so a target can also be run in-process (as the tests do).

This module does not import torch.
"""
from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import os
import runpy
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from gradguard.errors import InplaceConflictError, UsageError

_GRADGUARD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_RUNPY_FILES = {"<frozen runpy>", getattr(runpy, "__file__", "") or ""}


@dataclass
class Target:
    """What to run: a script path or a module name, and its arguments."""

    script: Optional[str] = None  # as typed: becomes sys.argv[0]
    module: Optional[str] = None
    args: list[str] = field(default_factory=list)
    path: str = ""  # absolute script path, or the module's file once resolved

    @property
    def label(self) -> str:
        return f"-m {self.module}" if self.module else str(self.script)

    # -- checking ---------------------------------------------------------------------
    def resolve(self) -> "Target":
        """Check that the target can be run; raise `UsageError` (one line) if not."""
        if self.module is not None:
            self.path = _module_origin(self.module)
        else:
            self.path = _check_script(str(self.script))
        return self

    # -- running ----------------------------------------------------------------------
    def run(self, before: Callable[[], Any] = lambda: None,
            failed: Callable[[BaseException], Any] = lambda exc: None) -> int:
        """Run the target; return its exit code. ``before`` runs just before the target's
        first line (after its ``sys.argv``/``sys.path`` are in place); ``failed`` with the
        target's uncaught exception, before its traceback is printed."""
        saved_argv, saved_path = sys.argv[:], sys.path[:]
        try:
            if self.module is not None:
                sys.argv = ["-m", *self.args]  # runpy puts the module's file in argv[0]
                sys.path[0:1] = [os.getcwd()]
            else:
                sys.argv = [str(self.script), *self.args]
                if os.path.isfile(self.path):  # run_path puts a directory or zip there itself
                    sys.path[0:1] = [os.path.dirname(os.path.realpath(self.path))]
            before()
            return _execute(self, failed)
        finally:
            sys.argv = saved_argv
            sys.path[:] = saved_path


def _check_script(script: str) -> str:
    path = os.path.abspath(script)
    if not os.path.exists(path):
        raise UsageError(f"can't open file '{script}': no such file")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "__main__.py")):
        raise UsageError(f"can't find '__main__.py' in '{script}'")
    if os.path.isfile(path) and not path.endswith((".zip", ".pyz")):
        try:
            with open(path, "rb") as f:
                source = f.read()
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            where = f"{script}:{exc.lineno}" if exc.lineno else script
            raise UsageError(f"{where}: {type(exc).__name__}: {exc.msg}") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"can't read '{script}': {exc}") from None
    return path


def _module_origin(name: str) -> str:
    """The file ``python -m name`` would run (a package runs its ``__main__``), searched
    with the current directory first on ``sys.path``, as ``python -m`` searches."""
    saved_path = sys.path[:]
    sys.path[0:1] = [os.getcwd()]
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            main_spec = importlib.util.find_spec(f"{name}.__main__")
            if main_spec is None:
                raise UsageError(f"'{name}' is a package and has no __main__ module")
            spec = main_spec
    except (ImportError, ValueError) as exc:
        raise UsageError(f"no module named '{name}' ({exc})") from None
    finally:
        sys.path[:] = saved_path
    if spec is None:
        raise UsageError(f"no module named '{name}'")
    return spec.origin or name


def _execute(target: Target, failed: Callable[[BaseException], Any] = lambda exc: None) -> int:
    """Run the target under Python's exit-code rules. This frame is the boundary between
    the launcher and the user's program: stack walks stop here (see `sites.mark_internal`)."""
    try:
        if target.module is not None:
            runpy.run_module(target.module, run_name="__main__", alter_sys=True)
        elif os.path.isfile(target.path) and not target.path.endswith((".zip", ".pyz")):
            _run_file(target.path)
        else:  # a directory or zip with __main__.py
            runpy.run_path(target.path, run_name="__main__")
    except SystemExit as exc:
        return exit_code_of(exc)
    except BaseException as exc:  # the target's own error: its traceback, as Python prints it
        try:
            failed(exc)
        except Exception as err:  # noqa: BLE001 - ours must not replace the target's error
            from gradguard._core.runtime import runtime

            runtime.internal_error("the report on the program's error", err)
        print_exception(exc, _short_message(exc))
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    return 0


def _run_file(path: str) -> None:
    """Execute a script file as ``__main__``, like ``python path``: ``__file__`` absolute,
    ``sys.argv[0]`` left as typed (runpy.run_path would overwrite it)."""
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=path, __cached__=None, __package__=None, __spec__=None,
                           __loader__=importlib.machinery.SourceFileLoader("__main__", path),
                           __builtins__=builtins)
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        exec(code, module.__dict__)
    finally:
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


def _short_message(exc: BaseException) -> Optional[str]:
    """gradguard's own error carries the full report, which `gradguard run` prints at
    exit anyway: the traceback shows only its first paragraph (PyTorch's sentence)."""
    if not isinstance(exc, InplaceConflictError):
        return None
    head = str(exc).split("\n\n", 1)[0]
    return f"{head}\n(gradguard: the report follows)"


def stack_boundaries() -> list[types.CodeType]:
    """Code objects that are launcher, not user, code: runpy's runners, then `_execute`
    (last), where stack walks end."""
    codes = [fn.__code__ for fn in (runpy.run_path, runpy.run_module, _run_file)]
    codes += [obj.__code__ for name, obj in vars(runpy).items()
              if name.startswith("_run") and isinstance(obj, types.FunctionType)]
    return [*codes, _execute.__code__]


def exit_code_of(exc: SystemExit) -> int:
    """The process exit code Python gives ``raise SystemExit(code)``."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _is_launcher_frame(tb: types.TracebackType) -> bool:
    filename = tb.tb_frame.f_code.co_filename
    return filename in _RUNPY_FILES or os.path.abspath(filename).startswith(_GRADGUARD_DIR)


def _user_traceback(tb: Optional[types.TracebackType]) -> Optional[types.TracebackType]:
    """The traceback without gradguard's and runpy's frames (the target's traceback as
    ``python script.py`` would show it: gradguard's write wrappers and hooks vanish)."""
    kept = []
    while tb is not None:
        if not _is_launcher_frame(tb):
            kept.append(tb)
        tb = tb.tb_next
    out = None
    for t in reversed(kept):
        out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


def print_exception(exc: BaseException, message: Optional[str] = None) -> None:
    """Print ``exc`` as an uncaught exception through ``sys.excepthook``, frames trimmed
    (chained exceptions too). ``message``: show this instead of ``str(exc)`` (for
    gradguard's own `InplaceConflictError`, whose report is printed separately)."""
    seen: set[int] = set()
    chain: Optional[BaseException] = exc
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        chain.__traceback__ = _user_traceback(chain.__traceback__)
        chain = chain.__cause__ or chain.__context__
    saved_args = exc.args
    if message is not None:
        exc.args = (message,)
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    finally:
        exc.args = saved_args


def split_command(tokens: Sequence[str], takes_value: Callable[[str], Optional[bool]]
                  ) -> tuple[list[str], list[str]]:
    """Split ``[options] (script | -m module) [args...]`` into our options and the
    target's command line, the way ``python`` does: everything after the script name or
    the module name belongs to the target. ``takes_value(option)`` says whether one of
    our options consumes the next token (None: not ours; left for argparse to reject)."""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            return list(tokens[:i]), list(tokens[i + 1:])
        if token.startswith("-m") and token != "-m":  # -mmodule, as python accepts it
            return list(tokens[:i]), ["-m", token[2:], *tokens[i + 1:]]
        if token == "-m" or not token.startswith("-") or token == "-":
            return list(tokens[:i]), list(tokens[i:])
        if "=" not in token and takes_value(token):
            i += 1
        i += 1
    return list(tokens), []
