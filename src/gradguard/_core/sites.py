"""Attributing work to source lines.

Stacks are captured as tuples of ``(code object, instruction offset)`` pairs: cheap to take
on the hot path (one per saved tensor and per intercepted write), and holding no frame,
so no local variable -- no tensor -- is kept alive by a recorded stack. They are turned
into readable `Frame`s only when a report is written.
"""
from __future__ import annotations

import linecache
import os
import sys
import threading
from types import CodeType, FrameType
from typing import Optional, Tuple

import torch

from gradguard._findings.model import Frame

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_GRADGUARD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_INTERNAL_DIRS = (_TORCH_DIR, _GRADGUARD_DIR)

# id(code object) -> is it torch's or gradguard's own code? Keyed by id because hashing a
# code object hashes its contents (constants included) every time, which made the walk
# cost ~0.7 us a frame. The cache never drops entries, so an id can never be reused by
# another code object while cached: `_pinned` keeps every cached code object alive.
_internal_code: dict = {}
_pinned: list = []

RawStack = Tuple[Tuple[CodeType, int], ...]  # (code, f_lasti), innermost first

# User frames kept per stack. The walk is paid once per saved tensor and costs about
# 0.2 us a frame; module nesting puts two torch frames (`_wrapped_call_impl`,
# `_call_impl`) between every pair of user frames, so 8 user frames is a ~24-frame walk.
# (Measured: walking a whole 96-frame stack made packing 4x slower on a ResNet step.)
MAX_STACK = 8
# Saves are far more frequent than writes (every op that needs an input or output for
# backward): their stacks keep the innermost 4 user frames, the save line and its
# callers, which is what locates the op; writes keep `max_stack`.
SAVE_STACK = 4
MAX_WALK = 64  # frames walked per capture, user and internal together


def is_internal_file(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_INTERNAL_DIRS)


# Marks a launcher frame (`gradguard run`'s frame that executes the target): stack walks
# end there, since everything above it (runpy, the console script, a test runner) is the
# launcher, not the user's program.
STOP = "stop"


def mark_internal(code: CodeType, stop: bool = False) -> None:
    """Treat ``code`` as internal (e.g. runpy's functions); ``stop``: end stack walks there."""
    _pinned.append(code)
    _internal_code[id(code)] = STOP if stop else True


def _is_internal(code: CodeType) -> bool:
    hit = _internal_code.get(id(code))
    if hit is None:
        _pinned.append(code)
        hit = _internal_code[id(code)] = is_internal_file(code.co_filename)
    return hit


def capture(skip: int = 1, limit: int = MAX_STACK) -> Tuple[RawStack, Tuple[CodeType, ...]]:
    """User frames (outside torch and gradguard), innermost first, and the torch/gradguard
    code between them and the capture point (e.g. an optimizer's ``step``), which says
    *how* the user's line reached the write or the save."""
    try:
        frame: Optional[FrameType] = sys._getframe(skip)
    except ValueError:  # a thread with fewer Python frames (a TorchScript fork's)
        return (), ()
    frames: list[tuple[CodeType, int]] = []
    inner: list[CodeType] = []
    internal = _internal_code
    budget = MAX_WALK
    while frame is not None and budget:
        budget -= 1
        code = frame.f_code
        hit = internal.get(id(code))
        if hit is None:
            hit = _is_internal(code)
        if hit:
            if not frames:
                inner.append(code)
            elif hit is STOP:
                break
        else:
            # f_lasti, not f_lineno: the line number costs a walk of the line table, and
            # is only needed if this stack ends up in a report.
            frames.append((code, frame.f_lasti))
            if len(frames) >= limit:
                break
        frame = frame.f_back
    return tuple(frames), tuple(inner)


def line_of(code: CodeType, lasti: int) -> int:
    for start, end, line in code.co_lines():
        if start <= lasti < end and line is not None:
            return line
    return code.co_firstlineno


# (id(code), f_lasti) -> Frame: a program with many conflicts resolves the same sites
# again and again. Code objects seen by `capture` are pinned (see `_pinned`), so their ids
# are never reused while cached; others are pinned here.
_resolved: dict[tuple[int, int], Frame] = {}


def resolve(stack: RawStack) -> list[Frame]:
    out = []
    for code, lasti in stack:
        key = (id(code), lasti)
        frame = _resolved.get(key)
        if frame is None:
            line = line_of(code, lasti)
            filename = os.path.abspath(code.co_filename)
            source = linecache.getline(code.co_filename, line).strip()
            frame = Frame(filename, line, getattr(code, "co_qualname", code.co_name), source)
            if len(_resolved) < 100_000:
                _pinned.append(code)
                _resolved[key] = frame
        out.append(frame)
    return out


def innermost_user_frame(skip: int = 1):
    """The innermost live frame outside torch and gradguard (or None), e.g. the line that
    called ``loss.backward()`` when asked from inside a saved-tensor unpack hook.

    On a GPU, unpack runs on one of autograd's device threads, which has no user frames;
    then the user frame is found on the thread that is waiting in ``backward()``."""
    frame = _first_user(sys._getframe(skip))
    if frame is None:
        for other in user_frames_of_other_threads():
            if "backward(" in linecache.getline(other.f_code.co_filename, other.f_lineno):
                return other
    return frame


def _first_user(frame):
    while frame is not None and _is_internal(frame.f_code):
        frame = frame.f_back
    return frame


def user_frames_of_other_threads() -> list:
    """The innermost user frame of every other thread."""
    me = threading.get_ident()
    frames = []
    for ident, frame in sys._current_frames().items():
        if ident != me:
            frame = _first_user(frame)
            if frame is not None:
                frames.append(frame)
    return frames


def called_through(inner: Tuple[CodeType, ...], path_part: str) -> bool:
    """Whether torch code whose file path contains ``path_part`` ran between the user's
    line and the captured point."""
    return any(path_part in code.co_filename for code in inner)


def source_of(stack: RawStack) -> str:
    """Source line of the innermost frame of a raw stack ('' if none)."""
    if not stack:
        return ""
    code, lasti = stack[0]
    return linecache.getline(code.co_filename, line_of(code, lasti))
