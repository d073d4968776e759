"""GG4xx: noisy rules, off unless selected."""
from __future__ import annotations

from typing import Iterator

from gradguard.lint.base import SOMETIMES, UNSAFE, Diagnostic, FileContext, Fix, Rule
from gradguard.lint.rules._common import _describe, _name, _out_of_place_fix


class InplaceOnArgument(Rule):
    code = "GG401"
    name = "inplace-on-argument"
    summary = "In-place write to a tensor passed in as a function argument"
    default = False
    fix_safety = UNSAFE
    doc = """
## What it does
Finds in-place writes (`x += y`, `x.mul_(y)`, `F.relu(x, inplace=True)`) to a
function's tensor argument when nothing in the function itself saved it.

## Why is this bad?
The write changes the caller's tensor.  If the caller (or an earlier layer) saved
it for backward, `backward()` fails far from this line; if it is a leaf that
requires grad, the call fails immediately.  Whether that happens depends on the
caller, so this rule is noisy and off by default.

## Example
```python
def forward(self, x):
    x += self.bias
    return x
```

Use instead:
```python
def forward(self, x):
    x = x + self.bias
    return x
```

## Fix safety
Unsafe: callers that relied on the argument being updated stop seeing the update.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for w in ctx.facts.writes:
            if w.kind not in ("method", "augassign", "inplace_kw") or w.saves or not w.is_param:
                continue
            if w.target.obj is None or w.target.obj.kind != "tensor" or w.in_no_grad:
                continue
            fix, hint = _out_of_place_fix(ctx, w)
            if fix is not None:
                fix = Fix(fix.kind, fix.line, fix.col, fix.end_line, fix.end_col, False, fix.title)
            yield self.diagnostic(ctx, w.node, f"{_describe(w)} modifies the caller's tensor `{_name(w)}` in place; "
                                  f"{hint}", fix)


class InplaceActivation(Rule):
    code = "GG402"
    name = "inplace-activation"
    summary = "Any inplace=True activation or dropout"
    default = False
    fix_safety = SOMETIMES
    doc = """
## What it does
Finds every `inplace=True` argument: `nn.ReLU(inplace=True)`,
`F.dropout(x, inplace=True)`, ...

## Why is this bad?
In-place activations save a little memory and make the layer overwrite its input.
Whether that is legal depends on what saved the input, which changes whenever the
model is edited.  Most code is better off without them; this rule is off by default.

## Example
```python
self.act = nn.ReLU(inplace=True)
```

Use instead:
```python
self.act = nn.ReLU()
```

## Fix safety
Safe for module constructors and for functional calls on a temporary
(`F.relu(self.bn(x), inplace=True)`); unsafe otherwise, where code after the call
may read the argument expecting the activated values.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for f in ctx.facts.inplace_flags:
            if f.stmt_level:
                fix = None  # the statement relies on the side effect
            else:
                fix = ctx.fix("drop_inplace", f.call, f.module_ctor or f.arg_temp, "Remove `inplace=True`")
            yield self.diagnostic(ctx, f.kw, f"`{f.name}(..., inplace=True)` overwrites its input; drop "
                                  f"`inplace=True` unless memory is critical", fix)
