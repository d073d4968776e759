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
from types import CodeType
from typing import Optional, Tuple

import torch

from gradguard._conflict import Frame

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_GRADGUARD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_INTERNAL_DIRS = (_TORCH_DIR, _GRADGUARD_DIR)

# code object -> is it torch's or gradguard's own code? Filled lazily; code objects are
# few and long-lived, so the cache stays small.
_internal_code: dict = {}

RawStack = Tuple[Tuple[CodeType, int], ...]  # (code, f_lasti), innermost first

MAX_STACK = 32
# Frames walked per capture, user and internal together: deep module nesting puts two
# torch frames (`_wrapped_call_impl`, `_call_impl`) between every pair of user frames,
# and the walk is paid once per saved tensor.
MAX_WALK = 96


def is_internal_file(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_INTERNAL_DIRS)


def _is_internal(code: CodeType) -> bool:
    hit = _internal_code.get(code)
    if hit is None:
        hit = _internal_code[code] = is_internal_file(code.co_filename)
    return hit


def capture(skip: int = 1, limit: int = MAX_STACK) -> Tuple[RawStack, Tuple[CodeType, ...]]:
    """User frames (outside torch and gradguard), innermost first, and the torch/gradguard
    code between them and the capture point (e.g. an optimizer's ``step``), which says
    *how* the user's line reached the write or the save."""
    frame = sys._getframe(skip)
    frames = []
    inner = []
    internal = _internal_code
    budget = MAX_WALK
    while frame is not None and budget:
        budget -= 1
        code = frame.f_code
        hit = internal.get(code)
        if hit is None:
            hit = _is_internal(code)
        if hit:
            if not frames:
                inner.append(code)
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


def resolve(stack: RawStack) -> list[Frame]:
    out = []
    for code, lasti in stack:
        line = line_of(code, lasti)
        filename = os.path.abspath(code.co_filename)
        source = linecache.getline(code.co_filename, line).strip()
        out.append(Frame(filename, line, getattr(code, "co_qualname", code.co_name), source))
    return out


def innermost_user_frame(skip: int = 1):
    """The innermost live frame outside torch and gradguard (or None), e.g. the line that
    called ``loss.backward()`` when asked from inside a saved-tensor unpack hook."""
    frame = sys._getframe(skip)
    while frame is not None and _is_internal(frame.f_code):
        frame = frame.f_back
    return frame


def called_through(inner: Tuple[CodeType, ...], path_part: str) -> bool:
    """Whether torch code whose file path contains ``path_part`` ran between the user's
    line and the captured point."""
    return any(path_part in code.co_filename for code in inner)
