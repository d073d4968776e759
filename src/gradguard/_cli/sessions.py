"""The session `gradguard run` runs a target in, shared with the child processes it covers
(`gradguard._cli.children`) and the framework callbacks: its options, how it is started,
how it streams, and where its reports go."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    from gradguard._detect.session import DetectSession


@dataclass
class RunOptions:
    mode: str = "detect"
    on_conflict: str = "record"
    when: str = "backward"
    json: Optional[str] = None
    graph: Optional[str] = None
    html: Optional[str] = None
    checksum: bool = False
    max_stack: int = 8
    exit_code: int = 1
    color: str = "auto"
    quiet: bool = False


def rank_info(environ: Optional[Mapping[str, str]] = None
              ) -> tuple[Optional[int], Optional[int]]:
    """(rank, world size) when launched as one of several processes (torchrun sets
    RANK and WORLD_SIZE), else (None, None)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
    except ValueError:
        return None, None
    return (rank, world) if world > 1 else (None, None)


def json_path_for(path: str, rank: Optional[int]) -> str:
    """Absolute path of the JSON report; ``report.json`` -> ``report.rank1.json``."""
    path = os.path.abspath(os.path.expanduser(path))
    if rank is None:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}{ext}"


def _use_color(setting: str, stream: Any) -> bool:
    if setting != "auto":
        return setting == "always"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty() and not os.environ.get("NO_COLOR")
                and os.environ.get("TERM") != "dumb")


def start_session(options: RunOptions) -> "DetectSession":
    """The session the target runs in: detect(), or protect() for ``--mode protect``."""
    if options.mode == "protect":
        from gradguard._protect.session import ProtectSession

        return ProtectSession(on_conflict=options.on_conflict,  # type: ignore[arg-type]
                              checksum=options.checksum, max_stack=options.max_stack)
    from gradguard._detect.session import DetectSession

    return DetectSession(on_conflict=options.on_conflict,  # type: ignore[arg-type]
                         when=options.when,  # type: ignore[arg-type]
                         checksum=options.checksum, max_stack=options.max_stack)


def stream_summaries(session: Any, options: RunOptions, stream: Any, prefix: str = "") -> None:
    """In record mode (unless ``quiet``), print each new conflict's SUMMARY line as soon
    as it is confirmed; the full report still comes at exit."""
    if options.on_conflict != "record" or options.quiet:
        return
    dim, reset = ("\033[2m", "\033[0m") if _use_color(options.color, stream) else ("", "")

    def summary_line(conflict: Any) -> None:
        stream.write(f"{prefix}{dim}SUMMARY: gradguard: {conflict.summary()}{reset}\n")
        stream.flush()

    session.listeners.append(summary_line)


def unrepaired(session: Any) -> list:
    """The conflicts that count for the exit code: protect's repairs do not."""
    return [c for c in session.conflicts if not c.repaired]


