"""Attributing work to source lines.

Stacks are captured as tuples of ``(code object, instruction offset)`` pairs: cheap to take
on the hot path (one per saved tensor and per intercepted write), and holding no frame,
so no local variable -- no tensor -- is kept alive by a recorded stack. They are turned
into readable `Frame`s only when a report is written.
"""
from __future__ import annotations

import ast
import functools
import inspect
import linecache
import os
import sys
import sysconfig
import textwrap
import threading
from types import CodeType, FrameType, TracebackType
from typing import Any, Callable, Optional, Tuple

import torch

from gradguard._findings.model import Frame

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_GRADGUARD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_INTERNAL_DIRS = (_TORCH_DIR, _GRADGUARD_DIR)

# id(code object) -> is it torch's or gradguard's own code (True; `STOP`), library code
# (`LIBRARY`) or the user's (False)? Keyed by id because hashing a
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
# Once `limit` frames are kept and all are library code, frames walked further to find the
# user's own line (a Hugging Face model's deeper saves are ~40 frames below the user's
# `model(x)`). `capture` bounds this search (`search=`); a save's walk goes to MAX_WALK,
# since `capture_save` pays the part above its anchor frame once per anchor, not per save.
SEARCH_USER = 8


def is_internal_file(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_INTERNAL_DIRS)


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.abspath(paths[k]) for k in ("stdlib", "purelib", "platlib") if paths.get(k)}
    return tuple(sorted(d.rstrip(os.sep) + os.sep for d in dirs))


_LIBRARY_DIRS = _library_dirs()
_PACKAGE_DIRS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


def is_library_file(filename: str) -> bool:
    """Library code: a file under a ``site-packages``/``dist-packages`` directory or the
    stdlib (sysconfig's ``stdlib``, ``purelib``, ``platlib``) that is outside the current
    working directory; everything else (outside torch and gradguard) is the user's. A
    virtual environment inside the project is still library code (its own
    ``site-packages``)."""
    if filename.startswith("<"):  # <stdin>, <string>, a notebook cell: the user's
        return False
    path = os.path.abspath(filename)
    cwd = os.getcwd().rstrip(os.sep) + os.sep
    in_package_dir = any(part in path for part in _PACKAGE_DIRS)
    if cwd != os.sep and path.startswith(cwd):
        return in_package_dir and any(part in path[len(cwd) - 1:] for part in _PACKAGE_DIRS)
    return in_package_dir or path.startswith(_LIBRARY_DIRS)


# `_internal_code`'s value for library code: falsy (not internal) and told apart by
# identity, so that one dict lookup a frame classifies it three ways on the hot path.
class _Library:
    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "LIBRARY"


LIBRARY: Any = _Library()


def _code_class(filename: str) -> Any:
    """True for torch's and gradguard's own code, `LIBRARY`, or False (the user's)."""
    if is_internal_file(filename):
        return True
    return LIBRARY if is_library_file(filename) else False


def is_library_code(code: CodeType) -> bool:
    return _classify(_internal_code, code, _code_class) is LIBRARY


# Marks a launcher frame (`gradguard run`'s frame that executes the target): stack walks
# end there, since everything above it (runpy, the console script, a test runner) is the
# launcher, not the user's program.
STOP = "stop"


def mark_internal(code: CodeType, stop: bool = False) -> None:
    """Treat ``code`` as internal (e.g. runpy's functions); ``stop``: end stack walks there."""
    _pinned.append(code)
    _internal_code[id(code)] = STOP if stop else True
    _walks.clear()  # walks remembered through it would now stop or go on elsewhere


def _classify(cache: dict, code: CodeType, test: Callable[[str], bool]) -> Any:
    """``cache[id(code)]``, computed once from the code's file (the code is pinned)."""
    hit = cache.get(id(code))
    if hit is None:
        _pinned.append(code)
        hit = cache[id(code)] = test(code.co_filename)
    return hit


def _is_internal(code: CodeType) -> Any:
    """Truthy for torch's and gradguard's own code (`STOP` for a launcher frame)."""
    return _classify(_internal_code, code, _code_class)


def capture(skip: int = 1, limit: int = MAX_STACK,
            search: int = SEARCH_USER) -> Tuple[RawStack, Tuple[CodeType, ...]]:
    """User frames (outside torch and gradguard), innermost first, and the torch/gradguard
    code between them and the capture point (e.g. an optimizer's ``step``), which says
    *how* the user's line reached the write or the save."""
    frame, inner = _first_outside(skip + 1)
    if frame is None:
        return (), inner
    return tuple(_walk_kept(frame, limit, search)[0]), inner


# The torch/gradguard code below first frames outside it, interned as a trie keyed by
# id(code) (codes classified are pinned): the same few call paths (a conv's, a norm's)
# recur every save, and a tuple kept by every saved record would otherwise be a new
# object a save. Each node: id(code) -> (the path so far, its children).
_InnerNode = dict
_inner_root: _InnerNode = {}
_inner_count = 0
_MAX_INNER = 100_000


# (id(code), instruction) of a first frame -> the torch/gradguard codes from it to the
# first frame outside them (the interned path): `_first_outside`'s shortcut. The codes are
# pinned (classified), so ids are not reused.
_paths: dict[tuple[int, int], Tuple[CodeType, ...]] = {}
_MAX_PATHS = 4096


def _first_outside(skip: int) -> Tuple[Optional[FrameType], Tuple[CodeType, ...]]:
    """The first frame outside torch and gradguard from ``sys._getframe(skip)`` outwards
    (None if none within `MAX_WALK`), and the torch/gradguard code walked to reach it,
    innermost first. ``skip`` counts from this function's own frame."""
    global _inner_root, _inner_count
    try:
        start = sys._getframe(skip)
    except ValueError:  # a thread with fewer Python frames (a TorchScript fork's)
        return None, ()
    frame: Optional[FrameType] = start
    # The same call site below the same torch frames as last time? Compare code objects
    # by identity (no classification, no trie) and check the frame after them is still
    # outside torch; anything else walks as below.
    known = _paths.get((id(start.f_code), start.f_lasti))
    if known is not None:
        for expected in known:
            if frame is None or frame.f_code is not expected:
                break
            frame = frame.f_back
        else:
            if frame is not None:
                hit = _internal_code.get(id(frame.f_code))
                if hit is not None and not hit:
                    return frame, known
        frame = start
    path: Tuple[CodeType, ...] = ()
    node = _inner_root
    internal = _internal_code
    budget = MAX_WALK
    while frame is not None and budget:
        budget -= 1
        code = frame.f_code
        entry = node.get(id(code))  # in the trie: internal code, classified before
        if entry is None:
            hit = internal.get(id(code))
            if hit is None:
                hit = _is_internal(code)
            if not hit:
                if path:
                    if len(_paths) >= _MAX_PATHS:
                        _paths.clear()
                    _paths[(id(start.f_code), start.f_lasti)] = path
                return frame, path
            if _inner_count >= _MAX_INNER:
                _inner_root, _inner_count = {}, 0
            _inner_count += 1
            entry = node[id(code)] = (path + (code,), {})
        path, node = entry
        frame = frame.f_back
    return None, path


def _walk_kept(frame: Optional[FrameType], limit: int, search: int,
               seen: Optional[list] = None) -> tuple[list[tuple[CodeType, int]], bool]:
    """The frames kept from ``frame`` (outside torch and gradguard) outwards: up to
    ``limit`` frames, walking on at most ``search`` frames past them to find one of the
    user's own when all kept are library code; and whether the walk reached the end of
    the stack. ``seen`` gets (code, instruction) of every frame looked at but the first:
    everything the result depends on (`capture_save` compares it)."""
    frames: list[tuple[CodeType, int]] = []
    internal = _internal_code
    mine = False  # a frame of the user's own code kept yet?
    budget = MAX_WALK
    extra = -1  # frames walked since `limit` library frames were kept (-1: not yet)
    first = frame
    while frame is not None and budget:
        budget -= 1
        if extra >= 0:
            extra += 1
            if extra > search:
                return frames, False
        code = frame.f_code
        if seen is not None and frame is not first:
            seen.append((code, frame.f_lasti))
        hit = internal.get(id(code))
        if hit is None:
            hit = _is_internal(code)
        if hit:
            if hit is STOP:
                return frames, False
        else:
            # f_lasti, not f_lineno: the line number costs a walk of the line table, and
            # is only needed if this stack ends up in a report. Past the limit, library
            # frames are walked over (not kept) until the user's own line is found.
            if hit is not LIBRARY:
                frames.append((code, frame.f_lasti))
                mine = True
            elif len(frames) < limit:
                frames.append((code, frame.f_lasti))
            if len(frames) >= limit:
                if mine:
                    return frames, False
                if extra < 0:
                    extra = 0
        frame = frame.f_back
    return frames, frame is None


class _Walk:
    """A save's walk above its anchor -- the first frame outside torch and gradguard (a
    module's `forward`, the user's function): what the walk looked at there, and what it
    kept. A later save below a frame running the same code, whose callers are the same
    code at the same instructions, would walk them to the same result: comparing is ~4x
    cheaper than walking (no classification), and nothing is held but code objects (no
    frame, so no local variable and no tensor)."""

    __slots__ = ("limit", "seen", "ends", "tail", "stacks")

    def __init__(self, limit: int, seen: tuple, ends: bool, tail: RawStack) -> None:
        self.limit = limit
        self.seen = seen  # (code, f_lasti) of each frame looked at above the anchor
        self.ends = ends  # the walk stopped at the end of the stack
        self.tail = tail  # frames kept above the anchor
        self.stacks: dict[int, RawStack] = {}  # the whole stack, by the anchor's instruction

    def matches(self, anchor: FrameType, limit: int) -> bool:
        if limit != self.limit:
            return False
        frame = anchor.f_back
        for code, lasti in self.seen:
            if frame is None or frame.f_code is not code or frame.f_lasti != lasti:
                return False
            frame = frame.f_back
        return frame is None or not self.ends


# id(anchor code) -> its recent walks, newest first (code objects classified are pinned,
# so ids are not reused). One code is reached through a few call chains (a block's
# attention and MLP calling one `Linear.forward`); a few walks each cover them.
_walks: dict[int, list[_Walk]] = {}
_WALKS_PER_CODE = 8
_MAX_CODES = 4096


def capture_save(skip: int, limit: int) -> Tuple[RawStack, Tuple[CodeType, ...]]:
    """`capture` for a saved tensor (``search=MAX_WALK``): the same result, reusing the
    walk above the anchor frame from an earlier save whose callers were the same (`_Walk`)."""
    frame, inner = _first_outside(skip + 1)
    if frame is None:
        return (), inner
    code = frame.f_code
    walks = _walks.get(id(code))
    found = None
    if walks is not None:
        for walk in walks:
            if walk.matches(frame, limit):
                found = walk
                break
    if found is None:
        seen: list = []
        kept, ends = _walk_kept(frame, limit, MAX_WALK, seen)
        found = _Walk(limit, tuple(seen), ends, tuple(kept[1:]))
        if walks is None:
            if len(_walks) >= _MAX_CODES:
                _walks.clear()
            walks = _walks[id(code)] = []
        walks.insert(0, found)
        del walks[_WALKS_PER_CODE:]
    lasti = frame.f_lasti
    stack = found.stacks.get(lasti)
    if stack is None:
        stack = found.stacks[lasti] = ((code, lasti),) + found.tail
    return stack, inner


def site_key(stack: RawStack) -> Optional[tuple[int, int]]:
    """The innermost frame of ``stack`` as (id(code), instruction), or None: a key that
    hashes cheaply (hashing a code object hashes its contents, ~0.4 us each) and is unique,
    since every code object a capture keeps is pinned (`_pinned`)."""
    if not stack:
        return None
    code, lasti = stack[0]
    return id(code), lasti


def stack_key(stack: RawStack) -> tuple[tuple[int, int], ...]:
    """Every frame of ``stack`` as `site_key` keys it."""
    return tuple([(id(code), lasti) for code, lasti in stack])


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
            frame = Frame(filename, line, getattr(code, "co_qualname", code.co_name), source,
                          library=is_library_code(code))
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
    """The innermost frame of the user's own code (neither torch, gradguard nor library
    code); else the innermost outside torch and gradguard; else None."""
    first = None
    walked = 0
    while frame is not None and walked < MAX_WALK:
        walked += 1
        code = frame.f_code
        if not _is_internal(code):
            if not is_library_code(code):
                return frame
            if first is None:
                first = frame
        elif _internal_code.get(id(code)) is STOP:
            break
        frame = frame.f_back
    return first


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
    # ``inner`` is one of a few interned paths (`_first_outside`), asked at every write
    # to a saved tensor: remembered by identity (the value holds it, so the id stays its).
    key = (id(inner), path_part)
    hit = _through.get(key)
    if hit is not None and hit[0] is inner:
        return hit[1]
    found = any(path_part in code.co_filename for code in inner)
    if len(_through) >= 4096:
        _through.clear()
    _through[key] = (inner, found)
    return found


_through: dict[tuple[int, str], tuple[Tuple[CodeType, ...], bool]] = {}


def source_of(stack: RawStack) -> str:
    """Source line of the innermost frame of a raw stack ('' if none)."""
    if not stack:
        return ""
    code, lasti = stack[0]
    return linecache.getline(code.co_filename, line_of(code, lasti))


def ctx_assignment(function: Any, attr: str) -> Optional[Frame]:
    """The line of ``function`` (an autograd.Function's ``forward``, or its code) that assigns
    ``ctx.<attr>`` (``ctx.scale = scale``), found in its source; None when its source
    cannot be read or no such assignment is there. Asked when a conflict is reported,
    never on the hot path."""
    code = function if isinstance(function, CodeType) else getattr(
        inspect.unwrap(function), "__code__", None)
    return _ctx_assignment(code, attr) if isinstance(code, CodeType) else None


@functools.lru_cache(maxsize=1024)
def _ctx_assignment(code: CodeType, attr: str) -> Optional[Frame]:
    # Cached by code object, which (unlike the function) holds no globals alive.
    try:
        lines, first = inspect.getsourcelines(code)
        filename = code.co_filename
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    head = tree.body[0] if tree.body else None
    params = head.args.args if isinstance(head, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
    ctx_name = params[0].arg if params else "ctx"
    for node, item in _assigned(tree, (ast.AnnAssign, ast.AugAssign)):
        if (isinstance(item, ast.Attribute) and item.attr == attr
                and isinstance(item.value, ast.Name) and item.value.id == ctx_name):
            line = first + getattr(node, "lineno", 1) - 1
            path = os.path.abspath(filename)
            return Frame(path, line, getattr(code, "co_qualname", code.co_name),
                         linecache.getline(filename, line).strip(),
                         library=is_library_file(path))
    return None


def live_user_frames(skip: int = 1) -> list[FrameType]:
    """The live frames of the user's own code (neither torch, gradguard nor library code),
    innermost first, within `MAX_WALK` frames. For reports only (it holds frames)."""
    out = []
    frame: Optional[FrameType] = sys._getframe(skip)
    walked = 0
    while frame is not None and walked < MAX_WALK:
        walked += 1
        code = frame.f_code
        hit = _is_internal(code)
        if hit is STOP:
            break
        if not hit and not is_library_code(code):
            out.append(frame)
        frame = frame.f_back
    return out


class FrameAt:
    """A frame as a traceback entry saw it: its own line and instruction, not the frame's
    current ones (a frame running the `with` block a session exits is at the `with` line by
    then). Everything else is the frame's."""

    __slots__ = ("frame", "f_lineno", "f_lasti")

    def __init__(self, frame: FrameType, lineno: int, lasti: int) -> None:
        self.frame = frame
        self.f_lineno = lineno
        self.f_lasti = lasti

    def __getattr__(self, name: str) -> Any:
        return getattr(self.frame, name)


def traceback_user_frames(tb: Optional[TracebackType]) -> list[FrameAt]:
    """The frames of the user's own code an exception passed through, innermost first (at
    most `MAX_WALK`, the innermost kept), each at the line the traceback records (for
    reports only: it holds frames)."""
    out: list[FrameAt] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if not _is_internal(code) and not is_library_code(code):
            out.append(FrameAt(tb.tb_frame, tb.tb_lineno, tb.tb_lasti))
        tb = tb.tb_next
    return out[::-1][:MAX_WALK]


@functools.lru_cache(maxsize=256)
def _assignments(code: CodeType) -> tuple[tuple[str, int], ...]:
    """(name, line) of every plain assignment to a name (and every ``for`` loop variable)
    in ``code``'s source (the whole file for module-level code), in source order."""
    try:
        if code.co_name == "<module>":
            text, first = "".join(linecache.getlines(code.co_filename)), 1
        else:
            lines, first = inspect.getsourcelines(code)
            text = textwrap.dedent("".join(lines))
        tree = ast.parse(text)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return ()
    found = [(item.id, first + getattr(node, "lineno", 1) - 1)
             for node, item in _assigned(tree, (ast.AnnAssign, ast.NamedExpr, ast.For,
                                                   ast.AsyncFor))
             if isinstance(item, ast.Name)]
    return tuple(sorted(found, key=lambda pair: pair[1]))


def _assigned(tree: ast.AST, single: tuple) -> list[tuple[ast.AST, ast.AST]]:
    """(statement, node inside one of its targets) for every assignment in ``tree``:
    ``x = ...`` and the single-target kinds in ``single``."""
    out: list[tuple[ast.AST, ast.AST]] = []
    for node in ast.walk(tree):
        targets: list = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, single):
            targets = [node.target]
        for target in targets:
            out.extend((node, item) for item in _bound(target))
    return out


def _bound(target: ast.AST) -> list[ast.AST]:
    """The names and attributes an assignment target binds: ``a``, ``a, (b, *c)``,
    ``ctx.x``; not the ``a`` of ``a[0] = v`` (a write into ``a``, not a new ``a``)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [item for element in target.elts for item in _bound(element)]
    if isinstance(target, ast.Starred):
        return _bound(target.value)
    return [target] if isinstance(target, (ast.Name, ast.Attribute)) else []


def assignment_of(frame: FrameType, name: str) -> Optional[Frame]:
    """The last assignment to ``name`` in ``frame``'s function at or before the line it
    is running (its ``name = ...`` line), or None."""
    now = frame.f_lineno
    lines = [line for var, line in _assignments(frame.f_code) if var == name and line <= now]
    if not lines:
        return None
    code = frame.f_code
    path = os.path.abspath(code.co_filename)
    return Frame(path, lines[-1], getattr(code, "co_qualname", code.co_name),
                 linecache.getline(code.co_filename, lines[-1]).strip(),
                 library=is_library_file(path))
