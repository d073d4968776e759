"""GG2xx: advice -- legal today, fragile tomorrow (on by default)."""
from __future__ import annotations

import re
from typing import Iterator

from gradguard.lint.base import SOMETIMES, Diagnostic, FileContext, Rule
from gradguard.lint.rules._common import _data_fix, _name


class DataWrite(Rule):
    code = "GG201"
    name = "data-write"
    summary = "Write through .data instead of under torch.no_grad()"
    fix_safety = SOMETIMES
    doc = """
## What it does
Finds writes through `.data`: `w.data.normal_(...)`, `w.data[...] = v`, `w.data += v`,
`w.data = t` (when `w` looks like a tensor: a known tensor, or a name such as
`weight`, `bias`, `param`, `grad`).  Not reported under `torch.no_grad()` -- a
`@torch.no_grad()` optimizer step, or a helper the file only calls from one --
where the write touches nothing a graph is being built from.

## Why is this bad?
`.data` is a legacy escape hatch: writes through it are invisible to autograd's
version counter, so if the tensor was saved for backward the gradients become
silently wrong instead of raising.  `torch.no_grad()` does the same job and keeps
the safety check.

## Example
```python
m.weight.data.normal_(0.0, 0.02)
```

Use instead:
```python
with torch.no_grad():
    m.weight.normal_(0.0, 0.02)
```

## Fix safety
The fix writes under `torch.no_grad()` on the tensor itself (inside a `no_grad`
block or function `.data` is just dropped).  That bumps the version counter the
`.data` write hid: if any graph saved the tensor -- anywhere, not only in this
file -- a silently wrong program becomes one that raises at `backward()`.  So the
fix is **safe only inside an initialisation function** (`__init__`,
`reset_parameters`, `init_weights`, `_init_weights`, ...: no graph holds a module's
tensors while it is being built) and unsafe everywhere else; there, the program
that keeps running is the one that moves the write after `backward()` (or clones).
`w.data = t` is always unsafe: it is rewritten as `w.copy_(t)`, and `.data =` may
change shape, dtype or device where `copy_` cannot.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for w in ctx.facts.writes:
            if w.kind != "data" or w.saves or not w.evidence or w.in_no_grad:
                continue  # under no_grad (a decorated optimizer step, or only called from one): nothing is tracked
            n = _name(w)
            if w.data_form == "method":
                hint = f"`with torch.no_grad(): {n}.{w.method}(...)`"
            elif w.data_form == "assign":
                hint = f"`with torch.no_grad(): {n}.copy_(...)`"
            elif w.data_form == "setitem":
                hint = f"`with torch.no_grad(): {n}[...] = ...`"
            else:
                hint = f"`with torch.no_grad(): {n} += ...`"
            yield self.diagnostic(ctx, w.node, f"write through `{n}.data` bypasses autograd's version check; use "
                                  f"{hint}", _data_fix(ctx, w, bool(_INIT_FUNCTION.search(w.function))))


# Functions that initialise tensors: no autograd graph can hold them yet.
_INIT_FUNCTION = re.compile(r"^(?:__init__|__post_init__|reset_parameters|_?reset_parameters"
                            r"|.*init(?:iali[sz]e)?_?(?:weights?|params|parameters)?)$")
