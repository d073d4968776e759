"""Abstract values of the data flow: tensor objects (storage + version counter,
shared by views and aliases), the values of expressions, name bindings, and the
facts (writes, saves, hazards) the rules read."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from gradguard.lint import tables as T

TENSOR, MAYBE, OTHER, JAX = "tensor", "maybe", "other", "jax"


@dataclass(frozen=True)
class Save:
    """An op that saved a tensor for backward."""

    op: str
    line: int
    output: bool  # True: the op saved its own result
    branch: tuple = ()  # the if/else arms the save happened in (see ScopeWalker.branch)
    via_data: bool = False  # the op saved the `.data` alias (its own tensor, sharing storage)


def exclusive(a: tuple, b: tuple) -> bool:
    """Two program points in different arms of the same ``if``: never both run."""
    arms = dict(a)
    return any(arms.get(node, arm) != arm for node, arm in b)


@dataclass(eq=False)
class Obj:
    """A tensor object: storage plus version counter, shared by views and aliases."""

    kind: str
    saves: list = field(default_factory=list)
    external: bool = False  # parameter, global, attribute, loop item: others may hold it
    escaped: bool = False  # stored in a container/attribute or passed to unknown code
    names: set = field(default_factory=set)


@dataclass(eq=False)
class ModuleInfo:
    """An ``nn.Module`` constructor call we recognised (``nn.ReLU(inplace=True)``)."""

    cls: str
    inplace: bool
    node: ast.Call
    inplace_kw: Optional[ast.keyword]
    items: tuple = ()  # nn.Sequential: its recognised modules in order (None for unknown ones)
    inplace_text: str = "True"  # `inplace=cfg.inplace`: a value only known at run time

    @property
    def last(self) -> Optional["ModuleInfo"]:
        """nn.Sequential: the module whose output is the chain's output (passthrough and
        in-place non-saving modules return the tensor before them)."""
        for item in reversed(self.items):
            if item is None:
                return None
            if item.cls in T.PASSTHROUGH_MODULES or (item.inplace and not item.saves_output):
                continue
            return item
        return None

    @property
    def saves_output(self) -> bool:
        if self.cls == "Sequential":
            last = self.last
            return last is not None and last.saves_output
        return self.cls in T.OUTPUT_SAVING_MODULES or (self.inplace and self.cls in T.OUTPUT_SAVING_WHEN_INPLACE)

    @property
    def saves_input(self) -> bool:
        if self.cls == "Sequential":
            return bool(self.items) and self.items[0] is not None and self.items[0].saves_input
        return self.cls in T.INPUT_SAVING_MODULES or (not self.inplace and self.cls in T.INPUT_SAVING_UNLESS_INPLACE)

    @property
    def label(self) -> str:
        if self.cls == "Sequential" and self.last is not None:
            return f"nn.Sequential ending in nn.{self.last.cls}"
        return f"nn.{self.cls}"


@dataclass(eq=False)
class Val:
    """The abstract value of an expression."""

    kind: str
    obj: Optional[Obj] = None
    via_data: bool = False  # reached through ``.data``: no version counter
    origin: Optional[int] = None  # statement index of the forward that built it (GG106)
    temp: bool = True  # not (yet) bound to a name
    module: Optional[ModuleInfo] = None
    optimizer: bool = False
    nograd: bool = False  # cannot require grad: factories, ids/masks, .detach(), int casts
    gradient: bool = False  # a `.grad` tensor (or an alias): a graph built from it is never backpropagated
    items: Optional[dict] = None  # a list/tuple/dict display: constant index or key -> Val
    leaf: Optional[str] = None  # a leaf that requires grad (or a view of one): how we know
    multi_view: Optional[str] = None  # an output of split/chunk/unbind (one node, several views)
    np_tensor: Optional[Obj] = None  # a NumPy array whose buffer torch.from_numpy shares with this tensor
    ddp: Optional["DdpModel"] = None  # a DistributedDataParallel model whose forwards broadcast buffers (GG113)
    fwd: tuple = ()  # DdpForward: per DDP model, the earliest forward this value's graph reaches

    def view(self, **changes: Any) -> "Val":  # any of the fields, each with its own type
        """A value sharing this one's tensor object (a view or alias)."""
        return replace(self, **changes)


@dataclass(eq=False)
class Binding:
    name: str
    val: Val
    index: int
    reads: list = field(default_factory=list)


_OTHER = Val(OTHER)


@dataclass(eq=False)
class Write:
    """An in-place write to a tensor."""

    kind: str  # method | torch_func | augassign | setitem | inplace_kw | inplace_module | data
    node: ast.expr | ast.stmt  # where to report
    stmt: ast.stmt
    target: Val
    saves: tuple[Save, ...]
    method: Optional[str] = None
    data_form: Optional[str] = None  # for kind == "data": method | assign | setitem | augassign
    stmt_level: bool = False
    target_name: Optional[str] = None
    ctor: Optional[ModuleInfo] = None  # for inplace_module
    evidence: bool = True  # enough evidence that the target is a tensor
    safe: Callable[[], bool] = lambda: False
    in_no_grad: bool = False
    is_param: bool = False
    op_text: str = ""
    function: str = ""  # name of the enclosing function ("" at module level)


@dataclass
class StepHazard:
    backward: ast.AST
    loss: str
    loss_line: int
    step_line: int
    step_text: str
    step: Optional[ast.AST] = None  # the step call: where the write happens, and where we report


@dataclass(eq=False)
class DdpModel:
    """``DistributedDataParallel(net)`` built in the scope, buffer broadcast left on."""

    node: ast.Call
    forwards: list = field(default_factory=list)  # its DdpForward calls, in walk order


@dataclass(frozen=True, eq=False)
class DdpForward:
    """One forward of a DDP model: its pre-forward hook broadcasts the buffers in place
    when the forward before it ran with grad enabled and outside ``no_sync()``."""

    key: int  # walk order
    node: ast.Call
    model: DdpModel
    branch: tuple
    grad: bool  # grad enabled: it builds a graph (which saves the buffers it reads)
    arms: bool  # grad enabled and outside no_sync(): the next forward broadcasts


@dataclass
class DdpHazard:
    first: ast.Call  # the forward whose graph the backward needs
    second: ast.Call  # the later forward whose buffer broadcast overwrites what that graph saved
    backward: ast.AST
    model: str


@dataclass
class CtxStore:
    node: ast.stmt  # the statement storing it (an assignment)
    attr: str
    ctx: str
    val: Val


@dataclass
class TapeEvent:
    kind: str  # assign | numpy
    node: ast.expr
    text: str


@dataclass
class SequentialHazard:
    node: ast.Call  # the inplace module constructor
    saver: str
    saver_line: int


@dataclass
class InplaceFlag:
    """Any ``inplace=True`` keyword (for the noisy GG402)."""

    call: ast.Call
    kw: ast.keyword
    name: str
    stmt_level: bool
    arg_temp: bool
    module_ctor: bool


@dataclass
class Facts:
    writes: list = field(default_factory=list)
    step_hazards: list = field(default_factory=list)
    ddp_hazards: list = field(default_factory=list)
    ctx_stores: list = field(default_factory=list)
    tape_events: list = field(default_factory=list)
    sequential: list = field(default_factory=list)
    inplace_flags: list = field(default_factory=list)
    frameworks: set = field(default_factory=set)
    stmt_call_attrs: set = field(default_factory=set)  # `self.<attr>(...)` used as a bare statement



def _all_nograd(*vals: Val) -> bool:
    tensors = [v for v in vals if v.obj is not None]
    return bool(tensors) and all(v.nograd for v in tensors)


def _min_origin(*origins: Optional[int]) -> Optional[int]:
    vals = [o for o in origins if o is not None]
    return min(vals) if vals else None


