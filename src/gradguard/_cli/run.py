"""``gradguard run``: run a training script under the sanitizer, with no code change.

    gradguard run [options] script.py [args...]
    gradguard run [options] -m module [args...]

The target runs exactly as ``python script.py args`` / ``python -m module args`` would
(see `gradguard._cli.launch`), inside one `gradguard.detect()` session entered before its
first line. When it ends -- normally, by ``sys.exit``, or by an exception, whose own
traceback is printed first -- the report goes to stderr (prefixed ``[rankN]`` under
torchrun) and ``--json`` is written. Exit code: the target's own if non-zero, else
``--exit-code`` (default 1) if conflicts were found, else 0.

Options come from the command line or from ``GRADGUARD_OPTIONS=k=v:k=v`` (the command
line wins); ``GRADGUARD_OPTIONS=help=1`` lists them. This module imports torch only once
the target is known to be runnable, so bad input fails fast with one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from gradguard._cli import launch as _launch
from gradguard._cli.sessions import (  # noqa: F401 - re-exported for the integrations
    RunOptions,
    _use_color,
    json_path_for,
    rank_info,
    start_session,
    stream_summaries,
    unrepaired,
)
from gradguard.errors import UsageError

if TYPE_CHECKING:
    pass

ENV_VAR = "GRADGUARD_OPTIONS"


# -- options: one table for the command line and GRADGUARD_OPTIONS ---------------------
def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, not {value!r}")
        return value

    return parse


def _int_in(low: int, high: Optional[int]) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected an integer, not {value!r}") from None
        if number < low or (high is not None and number > high):
            upper = f" to {high}" if high is not None else " or more"
            raise ValueError(f"expected an integer {low}{upper}, not {number}")
        return number

    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected 1 or 0, not {value!r}")


@dataclass(frozen=True)
class Option:
    name: str  # GRADGUARD_OPTIONS key; the flag is --name with dashes
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: Optional[str] = None  # None: a flag without a value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _picture_path(value: str) -> str:
    from gradguard._explain.picture import check_path

    try:
        check_path(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc).replace("draw() ", "--graph ")) from None
    return value


def _html_path(value: str) -> str:
    if not value.lower().endswith((".html", ".htm")):
        raise ValueError(f"expected a path ending in .html, not {value!r}")
    return value


OPTIONS: tuple[Option, ...] = (
    Option("mode", _choice("detect", "protect"), "detect",
           "detect (default): report conflicts; protect: also repair them by copy-on-write "
           "(backward gets the saved bytes as they were saved), and report what was copied",
           "{detect,protect}"),
    Option("on_conflict", _choice("raise", "warn", "record"), "record",
           "raise: stop at the first conflict; warn: a warning per conflict; record "
           "(default): collect and report at exit. A write that moved a saved tensor's "
           "version ends the script in every mode, as stock PyTorch would",
           "{raise,warn,record}"),
    Option("when", _choice("backward", "write"), "backward",
           "backward (default): report a conflict when backward needs the damaged tensor; "
           "write: report it at the write itself, before the saved bytes are lost (with "
           "--on-conflict raise, the traceback ends at the writing line; also catches "
           "writes into graphs never backwarded); not with --mode protect",
           "{backward,write}"),
    Option("json", str, None, "also write the report as JSON to PATH (under torchrun: "
           "PATH with .rankN before the suffix, one file per rank)", "PATH"),
    Option("graph", _picture_path, None, "also draw the autograd graph around each conflict "
           "to PATH (.svg; .dot/.gv for Graphviz source; .rankN added under torchrun)",
           "PATH"),
    Option("html", _html_path, None, "also write a self-contained HTML report to PATH (each "
           "conflict's report, source snippets and picture)", "PATH"),
    Option("checksum", _bool, False, "fingerprint saved tensors to catch writes outside "
           "PyTorch (NumPy views); costs a pass over every saved tensor's bytes"),
    Option("max_stack", _int_in(1, None), 8, "user frames kept per write (default 8)", "N"),
    Option("exit_code", _int_in(0, 255), 1, "exit code when conflicts were found (default "
           "1); the script's own non-zero exit code wins", "N"),
    Option("color", _choice("auto", "always", "never"), "auto",
           "colour the report (default auto: only on a terminal, and not with NO_COLOR)",
           "{auto,always,never}"),
    Option("quiet", _bool, False, "print only the report at exit, not each conflict's "
           "SUMMARY line as it is found (on_conflict=record)"),
)
_BY_NAME = {o.name: o for o in OPTIONS}
_BY_FLAG = {o.flag: o for o in OPTIONS}


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return option.parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.name
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("gradguard run [options] script.py [args ...]\n"
                    "       gradguard run [options] -m module [args ...]")
    parser.epilog = (f"Options can also be given as {ENV_VAR}=name=value:name=value "
                     f"(the command line wins); {ENV_VAR}=help=1 lists them.")
    for option in OPTIONS:
        if option.metavar is None:
            parser.add_argument(option.flag, dest=option.name, action="store_true",
                                default=None, help=option.help)
        else:
            parser.add_argument(option.flag, dest=option.name, type=_argparse_type(option),
                                default=None, metavar=option.metavar, help=option.help)
    parser.add_argument("-m", dest="module", metavar="module", default=None,
                        help="run a library module as a script, like python -m")
    parser.add_argument("script", nargs="?", help="the script to run, then its arguments")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def split_argv(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Our options, and the target's command line (script or ``-m module``, and its
    arguments, which are never parsed as ours)."""

    def takes_value(token: str) -> Optional[bool]:
        option = _BY_FLAG.get(token)
        return None if option is None else option.metavar is not None

    return _launch.split_command(tokens, takes_value)


def parse_env(text: str) -> dict[str, Any]:
    """``k=v:k=v`` -> {name: parsed value}; bad input raises `UsageError`."""
    values: dict[str, Any] = {}
    for item in text.split(":"):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key == "help":
            values["help"] = _bool(value) if sep else True
            continue
        option = _BY_NAME.get(key)
        if option is None:
            known = ", ".join(["help", *_BY_NAME])
            raise UsageError(f"{ENV_VAR}: unknown option {key!r} (known: {known})")
        if not sep:
            if option.metavar is not None:
                raise UsageError(f"{ENV_VAR}: {key} needs a value ({key}=...)")
            value = "1"
        try:
            values[key] = option.parse(value.strip())
        except ValueError as exc:
            raise UsageError(f"{ENV_VAR}: {key}: {exc}") from None
    return values


def options_help() -> str:
    lines = [f"gradguard run options (as --name on the command line, or "
             f"{ENV_VAR}=name=value:name=value):"]
    for option in OPTIONS:
        default = "0" if option.default is False else option.default
        lines.append(f"  {option.name}={'' if default is None else default}")
        lines.append(f"      {option.help}")
    return "\n".join(lines)


# -- the run -----------------------------------------------------------------------------
@dataclass
class RunResult:
    exit_code: int
    session: Any  # the DetectSession
    report: str  # the text report as printed (without colour)


def _check_writable(path: str, what: str = "the JSON report") -> None:
    """Fail now, not after a long run, if a report file cannot be written."""
    if os.path.isdir(path):
        raise UsageError(f"cannot write {what} to '{path}': it is a directory")
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {what} to '{path}': "
                         f"{exc.strerror or exc}") from None
    if not existed:
        os.unlink(path)


def _compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (0 if dynamo never ran)."""
    if "torch._dynamo.utils" not in sys.modules:
        return 0
    from gradguard._detect.session import compiled_graphs

    return compiled_graphs()


COMPILE_GAP = (
    "torch.compile ran ({n} graph{s}): writes inside compiled regions were not "
    "intercepted. A compiled graph's own saved tensors are safe from its own writes (it is "
    "functionalized) and are still checked against eager writes at backward; but a compiled "
    "in-place update (a compiled `opt.step()`) into a tensor an eager graph saved is caught "
    "only at backward, by its version, without the writing line: to stop at such a write, "
    "rerun with compilation off (TORCHDYNAMO_DISABLE=1) and --when write")


def _note_compiled_regions(session: Any, before: int) -> None:
    compiled = _compiled_graphs() - before
    if compiled > 0:
        session.coverage_gaps.append(COMPILE_GAP.format(n=compiled, s="s" if compiled > 1 else ""))


def _launcher_boundaries() -> None:
    """Stack walks skip runpy's frames and stop at the frame running the target."""
    from gradguard._core import sites

    codes = _launch.stack_boundaries()
    for code in codes[:-1]:
        sites.mark_internal(code)
    sites.mark_internal(codes[-1], stop=True)


def write_outputs(session: Any, paths: dict[str, str], run: dict[str, Any],
                  children: Sequence[dict[str, Any]] = ()) -> None:
    """Write the report files: ``paths`` maps "json", "graph", "html" to where. The JSON
    gets a "children" list when child processes were checked (each: pid, rank, argv and
    its own report)."""
    if "json" in paths:
        kids = [{k: kid.get(k) for k in ("pid", "rank", "world_size", "argv", "exit_code",
                                         "report")} for kid in children]
        # a protect session's report includes its "protect" block
        data = session.to_dict(run=run, children=kids or None)
        with open(paths["json"], "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    if "graph" in paths:
        session.draw(paths["graph"])
    if "html" in paths:
        from gradguard._explain.html import write_html

        write_html(session, paths["html"])


def execute(options: RunOptions, target: _launch.Target,
            stderr: Any = None) -> RunResult:
    """Run ``target`` under the sanitizer, print the report, write the outputs. Python
    child processes get sessions of their own (`gradguard._cli.children`): their
    reports are merged into this one."""
    from gradguard._cli import children as _children

    outer = _children.claim()  # first: before torch is imported here
    from gradguard._explain.text import render_run

    stderr = sys.stderr if stderr is None else stderr
    rank, world = rank_info()
    paths = {key: json_path_for(value, rank) for key, value in
             (("json", options.json), ("graph", options.graph), ("html", options.html))
             if value}
    for key, path in paths.items():
        _check_writable(path, {"json": "the JSON report", "graph": "the graph picture",
                               "html": "the HTML report"}[key])
    _launcher_boundaries()
    session = start_session(options)
    prefix = f"[rank{rank}] " if rank is not None else ""
    stream_summaries(session, options, stderr, prefix)
    family = _children.Family(options, outer)
    compiled_before = _compiled_graphs()
    pid = os.getpid()
    code = 1
    try:
        with family, session:
            code = target.run(failed=session.on_exception)
    finally:
        if os.getpid() == pid:  # not in a forked child that unwound through here
            _note_compiled_regions(session, compiled_before)
            kids, gaps = family.collect()
            session.coverage_gaps.extend(gaps)
            if code == 0 and (unrepaired(session) or any(k.get("unrepaired") for k in kids)):
                code = options.exit_code
            sys.stdout.flush()
            for kid in kids:
                stderr.write(_child_report(kid) + "\n")
            extra = "".join(f"\n{prefix}{line}" for line in session.trailer_lines())
            report = render_run(session.conflicts, session.coverage_gaps, prefix=prefix) + extra
            family_wide = bool(kids or gaps)  # children ran: say what was checked
            if family_wide:
                report = _with_tally(report, session, kids, prefix)
            if _use_color(options.color, stderr):
                colored = render_run(session.conflicts, session.coverage_gaps,
                                     prefix=prefix, color=True) + extra
                stderr.write((_with_tally(colored, session, kids, prefix) if family_wide
                              else colored) + "\n")
            else:
                stderr.write(report + "\n")
            stderr.flush()
            if outer is not None:  # this run is itself a child: report to the outer run
                outer.write_report(session, printed=True, exit_code=code)
            run = {"target": target.label, "file": target.path, "args": target.args,
                   "exit_code": code, "rank": rank, "world_size": world}
            try:
                write_outputs(session, paths, run, kids)
            except OSError as exc:
                stderr.write(f"gradguard: error: cannot write '{exc.filename}': "
                             f"{exc.strerror or exc}\n")
                code = code or 2
    return RunResult(code, session, report)


def _child_report(kid: dict[str, Any]) -> str:
    """A child's report, each line prefixed ``[rankN]`` (torchrun) or ``[pidN]``; only its
    SUMMARY lines if it printed its report itself (a child that is ``gradguard run``)."""
    from gradguard._cli.children import label_of

    prefix = f"[{label_of(kid['rank'], kid['pid'])}] "
    lines = kid.get("text", "").split("\n")
    if kid.get("printed"):
        lines = [line for line in lines if line.startswith("SUMMARY: ")] or lines[:1]
    return "\n".join(f"{prefix}{line}" if line else prefix.rstrip() for line in lines)


def _with_tally(report: str, session: Any, kids: Sequence[dict[str, Any]], prefix: str) -> str:
    """This process's report, then one line over the whole family of processes."""
    found = sum(len(k["report"]["conflicts"]) for k in kids)
    mine = len(session.conflicts)
    clean = f"{prefix}gradguard: no in-place conflicts found"
    if not mine and report.startswith(clean):
        report = report.replace(clean, f"{clean} in this process", 1)
    total = mine + found
    return (f"{report}\n{prefix}gradguard: {len(kids)} child process"
            f"{'es' if len(kids) != 1 else ''} checked; {total} conflict"
            f"{'s' if total != 1 else ''} in all" +
            (f" ({found} in child processes)" if found else ""))


def _options_from(args: argparse.Namespace, env: dict[str, Any]) -> RunOptions:
    values = {}
    for option in OPTIONS:
        given = getattr(args, option.name, None)
        values[option.name] = given if given is not None else env.get(option.name,
                                                                       option.default)
    return RunOptions(**values)


def _target_from(args: argparse.Namespace) -> Optional[_launch.Target]:
    command = list(getattr(args, "passthrough", None) or [])
    if not command:  # argparse's own view, if main() did not split (e.g. called directly)
        if args.module:
            command = ["-m", args.module, *(args.script and [args.script] or []), *args.args]
        elif args.script:
            command = [args.script, *args.args]
    if not command:
        return None
    if command[0] == "-m":
        if len(command) < 2 or not command[1]:
            raise UsageError("argument -m: expected a module name")
        return _launch.Target(module=command[1], args=command[2:])
    return _launch.Target(script=command[0], args=command[1:])


def run(args: argparse.Namespace) -> int:
    env = parse_env(os.environ.get(ENV_VAR, ""))
    target = _target_from(args)
    if env.pop("help", False):
        print(options_help(), file=sys.stderr)
        if target is None:
            return 0
    if target is None:
        raise UsageError("nothing to run: give a script or -m module (see `gradguard run --help`)")
    options = _options_from(args, env)
    if options.mode == "protect" and options.when == "write":
        raise UsageError("--when write does not go with --mode protect: protect repairs the "
                         "write instead of stopping at it")
    target.resolve()
    return execute(options, target).exit_code
