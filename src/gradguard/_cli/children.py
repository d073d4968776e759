"""Child processes of ``gradguard run``: a session in every Python child, the way
coverage.py measures subprocesses.

``gradguard run`` exports ``GRADGUARD_SUBPROCESS`` (JSON: its options and a report
directory) before the target starts. The ``gradguard_subprocess.pth`` file installed with
the package runs one line at every interpreter start: it looks that variable up and does
nothing else when it is unset (no import, not even of gradguard). When it is set, `start`
arms this process: it notes its start in the report directory, and a session is entered
as soon as the program imports torch (a child that never imports torch costs nothing
more). At exit the child writes its report there -- ``<pid>.json`` -- and, with ``--json
PATH``, ``PATH`` with ``.rankN`` (under torchrun) or ``.pidN`` before the suffix. The
parent (`Family`) then merges every child's report into its own, and names as coverage
gaps the children it cannot vouch for: one that started but wrote no report (killed, or
ended by ``os._exit``), and a Python child launched through ``subprocess`` that never
started the hook (its interpreter has no gradguard installed, or ran with ``-S``).

A child that is itself ``gradguard run`` claims the process (`claim`): its own session is
the only one, and its report goes to the parent like any child's.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any, Optional, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

ENV_VAR = "GRADGUARD_SUBPROCESS"
_FORMAT = 1

_child: Optional["Child"] = None  # this process, when it is a child of `gradguard run`


def _cmdline() -> list[str]:
    """This process's command line (``sys.argv`` is not set yet when .pth files run)."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return list(getattr(sys, "orig_argv", None) or getattr(sys, "argv", None) or [])


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)  # the parent never reads half a file


def label_of(rank: Optional[int], pid: int) -> str:
    return f"rank{rank}" if rank is not None else f"pid{pid}"


# -- the child side ---------------------------------------------------------------------
def start() -> None:
    """Called by the .pth line when ``GRADGUARD_SUBPROCESS`` is set. Never raises: a
    broken hook must not break the user's interpreter."""
    global _child
    if _child is not None and _child.pid == os.getpid():
        return  # a site-packages reached twice (a lib64 symlink) runs the .pth line twice
    try:
        config = json.loads(os.environ[ENV_VAR])
        if config.get("format") != _FORMAT or config.get("parent") == os.getpid():
            return
        _child = Child(config["dir"], config.get("options", {}))
        _child.arm()
    except Exception as exc:  # noqa: BLE001 - report and go on, like coverage's hook
        sys.stderr.write(f"gradguard: the child-process start hook failed: {exc}\n")


def claim() -> Optional["Child"]:
    """``gradguard run`` calls this first: in a child that is itself ``gradguard run``,
    the start hook stands down (no second session) and its `Child` is returned, for the
    run to write its report where the parent reads it."""
    child = _child
    if child is not None and child.pid == os.getpid():
        child.claimed = True
        child.stop_session()
        return child
    return None


class Child:
    def __init__(self, directory: str, options: dict[str, Any]) -> None:
        self.dir = directory
        self.options = options
        self.pid = os.getpid()
        self.session: Any = None
        self.claimed = False
        self.started = False
        self.gaps: list[str] = []

    def arm(self) -> None:
        if not os.path.isdir(self.dir):
            return  # the run that exported it has ended (a child outliving it): stand down
        _write_json(os.path.join(self.dir, f"{self.pid}.start"), {"pid": self.pid,
                                                                   "argv": _cmdline()})
        watch_launches(self.dir)
        if "torch" in sys.modules:
            self.on_torch()
        else:
            sys.meta_path.insert(0, _TorchImportHook(self))
        atexit.register(self.finish)

    def on_torch(self) -> None:
        """torch has just been imported: enter the session (in this thread: saved-tensor
        hooks are per thread)."""
        if self.claimed or self.started:
            return
        self.started = True
        if threading.current_thread() is not threading.main_thread():
            self.gaps.append("torch was first imported in a thread other than the main one: "
                             "gradguard's saved-tensor hooks cover that thread only")
        from gradguard._cli import sessions as _run

        options = _run.RunOptions(**{k: v for k, v in self.options.items()
                                     if k in _run.RunOptions.__dataclass_fields__})
        self.session = _run.start_session(options)
        rank, _ = _run.rank_info()
        _run.stream_summaries(self.session, options, sys.stderr,
                              f"[{label_of(rank, self.pid)}] ")
        self.session.__enter__()

    def unhook(self) -> None:
        sys.meta_path[:] = [h for h in sys.meta_path
                            if not (isinstance(h, _TorchImportHook) and h.child is self)]

    def stop_session(self) -> None:
        self.unhook()
        if self.session is not None:
            session, self.session = self.session, None
            session.__exit__(None, None, None)

    def finish(self) -> None:
        """At exit: leave the session and write the report (unless ``gradguard run`` in
        this process claimed it, and writes its own through `write_report`)."""
        if self.claimed or os.getpid() != self.pid:
            return
        session = self.session
        self.stop_session()
        try:
            self.write_report(session)
        except OSError:
            pass  # the parent names the missing report as a coverage gap

    def write_report(self, session: Any, printed: bool = False,
                     exit_code: Optional[int] = None) -> None:
        from gradguard._cli import sessions as _run

        rank, world = _run.rank_info()
        data: dict[str, Any] = {"pid": self.pid, "rank": rank, "world_size": world,
                                "argv": list(getattr(sys, "argv", [])), "printed": printed,
                                "checked": session is not None, "exit_code": exit_code}
        if session is not None:
            from gradguard._explain.text import render_run

            session.coverage_gaps.extend(g for g in self.gaps if g not in session.coverage_gaps)
            data["report"] = session.to_dict()
            data["unrepaired"] = len(_run.unrepaired(session))
            data["text"] = "\n".join([render_run(session.conflicts, session.coverage_gaps),
                                      *session.trailer_lines()])
            json_path = self.options.get("json")
            if json_path:
                root, ext = os.path.splitext(_run.json_path_for(json_path, None))
                user = {**data["report"], "run": {"argv": data["argv"], "pid": self.pid,
                                                  "rank": rank, "world_size": world}}
                _write_json(f"{root}.{label_of(rank, self.pid)}{ext}", user)
        _write_json(os.path.join(self.dir, f"{self.pid}.json"), data)


class _TorchImportHook:
    """A meta-path finder that runs `Child.on_torch` once ``import torch`` has finished."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self._busy = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch" or self._busy:
            return None
        import importlib.util

        self._busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy = False
        loader: Any = getattr(spec, "loader", None)  # torch's loader, whatever its class
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        child, exec_module = self.child, loader.exec_module

        class _Loader:  # torch's own loader, then the session
            def __getattr__(self, attr: str) -> Any:
                return getattr(loader, attr)

            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                exec_module(module)
                module.__loader__ = module.__spec__.loader = loader  # torch's own again
                child.unhook()
                child.on_torch()

        spec.loader = cast("Loader", _Loader())  # duck-typed: delegates to torch's loader
        return spec


# -- launches: Python children started through subprocess --------------------------------
_PYTHON = re.compile(r"^python[0-9.]*$")
_watched: list[str] = []


def _is_python(argv0: str) -> bool:
    name = os.path.basename(argv0)
    try:
        same = os.path.realpath(argv0) == os.path.realpath(sys.executable)
    except OSError:
        same = False
    return same or bool(_PYTHON.match(name))


def watch_launches(directory: str) -> None:
    """Note in ``directory`` each Python child this process starts with `subprocess`, so
    the parent can tell a child that never started the hook."""
    import subprocess

    _watched[:] = [directory]
    if getattr(subprocess.Popen.__init__, "_gradguard", False):
        return
    original = subprocess.Popen.__init__

    def __init__(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        original(self, args, *rest, **kwargs)
        try:
            argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
            argv = [os.fsdecode(a) for a in argv]
            if kwargs.get("shell") or not argv:
                return
            program = os.fsdecode(kwargs.get("executable") or argv[0])
            if _watched and _is_python(program):
                _write_json(os.path.join(_watched[0], f"{self.pid}.launched"),
                            {"pid": self.pid, "argv": argv})
        except Exception:  # noqa: BLE001 - never break the user's Popen
            pass

    __init__._gradguard = True  # type: ignore[attr-defined]
    __init__._original = original  # type: ignore[attr-defined]
    subprocess.Popen.__init__ = __init__  # type: ignore[method-assign]


def unwatch_launches() -> None:
    import subprocess

    _watched.clear()
    original = getattr(subprocess.Popen.__init__, "_original", None)
    if original is not None:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]


# -- the parent side ----------------------------------------------------------------------
class Family:
    """``gradguard run``'s side: export the options to the children, then read back what
    they reported. In a child that is itself ``gradguard run`` (``outer``), the children
    report to the outermost run, which merges them all."""

    def __init__(self, options: Any, outer: Optional[Child] = None) -> None:
        self.options = options
        self.outer = outer
        self.dir = outer.dir if outer is not None else ""
        self._saved_env: Optional[str] = None

    def __enter__(self) -> "Family":
        if self.outer is not None:
            return self
        self.dir = tempfile.mkdtemp(prefix="gradguard-children-")
        self._saved_env = os.environ.get(ENV_VAR)
        options = {k: getattr(self.options, k) for k in
                   ("mode", "on_conflict", "when", "checksum", "max_stack", "json", "quiet",
                    "color")}
        os.environ[ENV_VAR] = json.dumps({"format": _FORMAT, "dir": self.dir,
                                          "parent": os.getpid(), "options": options})
        watch_launches(self.dir)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.outer is not None:
            return
        unwatch_launches()
        if self._saved_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = self._saved_env

    def collect(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The children's reports (only those that imported torch, by rank then pid), and
        coverage gaps for the children that could not be checked. Removes the directory."""
        if self.outer is not None or not self.dir:
            return [], []
        files: dict[str, dict[int, Any]] = {"json": {}, "start": {}, "launched": {}}
        for name in sorted(os.listdir(self.dir)):
            stem, _, kind = name.partition(".")
            if kind in files and stem.isdigit():
                try:
                    with open(os.path.join(self.dir, name), encoding="utf-8") as f:
                        files[kind][int(stem)] = json.load(f)
                except (OSError, ValueError):
                    pass
        reports, gaps = files["json"], []
        for pid, started in sorted(files["start"].items()):
            if pid not in reports:
                gaps.append(f"child process {pid} ({_command(started['argv'])}) started under "
                            "gradguard but wrote no report (it was killed, or ended through "
                            "os._exit, before exit): its conflicts, if any, are unknown")
        for pid, launched in sorted(files["launched"].items()):
            if pid not in files["start"] and pid not in reports:
                gaps.append(f"Python child process {pid} ({_command(launched['argv'])}) ran "
                            "without gradguard's start hook (gradguard is not installed in "
                            "its interpreter, or it ran with -S): not checked")
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
        checked = [r for r in reports.values() if r.get("checked")]
        checked.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, r["pid"]))
        return checked, gaps


def _command(argv: list[str], limit: int = 120) -> str:
    text = " ".join(argv)
    return text if len(text) <= limit else text[:limit - 3] + "..."
