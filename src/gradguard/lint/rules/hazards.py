"""GG1xx: hazards -- writes that make backward raise or compute wrong gradients."""
from __future__ import annotations

import ast
from typing import Iterator

from gradguard.lint.base import SAFE, SOMETIMES, UNSAFE, Diagnostic, FileContext, Rule
from gradguard.lint.rules._common import _WRITE_KINDS, _data_fix, _describe, _first, _name, _out_of_place_fix


class InplaceOnSavedOutput(Rule):
    code = "GG101"
    name = "inplace-on-saved-output"
    summary = "In-place write to the output of an op that saved its output for backward"
    fix_safety = SOMETIMES
    doc = """
## What it does
Finds in-place writes (`relu_()`, `mul_()`, `+=`, `inplace=True`, an in-place module)
to the result of an operation whose backward reads its own output: `sigmoid`, `tanh`,
`exp`, `softmax`, `log_softmax`, `sqrt`, `rsqrt`, `reciprocal`, `relu` and the
matching `nn` modules.

## Why is this bad?
Autograd keeps a reference to that output to compute the gradient.  Overwriting it
bumps its version counter, and `backward()` fails with "one of the variables needed
for gradient computation has been modified by an inplace operation".

## Example
```python
y = torch.sigmoid(x)
y.mul_(2)
loss = y.sum()
```

Use instead:
```python
y = torch.sigmoid(x)
y = y.mul(2)
loss = y.sum()
```

## Fix safety
The fix rewrites the write out of place (`y = y.mul(2)`, `y = y + 1`, dropping
`inplace=True`).  It is safe when the written tensor is a local that no other name,
container or attribute refers to -- then nothing else can observe the difference.
It is unsafe for function arguments, attributes and aliased tensors, whose other
holders would stop seeing the write.  Out-of-place arithmetic may promote dtype
(`float16 += float32` stays float16 in place; `a + b` is float32).
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for w in ctx.facts.writes:
            if w.kind not in _WRITE_KINDS:
                continue
            s = _first(w.saves, True)
            if s is None:
                continue
            fix, hint = _out_of_place_fix(ctx, w)
            yield self.diagnostic(ctx, w.node, f"{_describe(w)} overwrites the output of `{s.op}` (line {s.line}), "
                                  f"which autograd saved for backward; {hint}", fix)


class InplaceOnSavedInput(Rule):
    code = "GG102"
    name = "inplace-on-saved-input"
    summary = "In-place write to a tensor an earlier op saved for backward"
    fix_safety = SOMETIMES
    doc = """
## What it does
Finds augmented assignments (`x += y`) and in-place methods (`x.mul_(y)`,
`x.clamp_(...)`) on a tensor that an earlier operation in the same function saved
for backward: an operand of `@`/`matmul`/`mm`/`bmm`/`einsum`, of `*` or `/` between
two tensors, of `log`/`sin`/`pow`/..., or the input of a layer that saves it
(`nn.Linear`, `nn.Conv2d`, `nn.LayerNorm`, `nn.GELU`, ... assigned in `__init__`).

The rule follows names through the function: `x = x + 1` makes `x` a new tensor and
clears the hazard; `v = x.view(...)` and `x.detach()` alias `x` and keep it.

## Why is this bad?
The saved tensor is needed to compute gradients of the *other* operand.  Changing it
in place makes `backward()` raise "modified by an inplace operation".

## Example
```python
h = x @ w
x += 1
(h.sum() + x.sum()).backward()
```

Use instead:
```python
h = x @ w
x = x + 1
(h.sum() + x.sum()).backward()
```

## Fix safety
Safe when `x` is a local tensor that nothing else refers to; unsafe for function
arguments (the caller would no longer see the update), attributes and aliases.
Out-of-place arithmetic may promote dtype where the in-place form kept it.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for w in ctx.facts.writes:
            if w.kind not in _WRITE_KINDS or not w.saves or _first(w.saves, True) is not None:
                continue
            s = w.saves[0]
            fix, hint = _out_of_place_fix(ctx, w)
            yield self.diagnostic(ctx, w.node, f"{_describe(w)} modifies `{_name(w)}` in place after `{s.op}` "
                                  f"(line {s.line}) saved it for backward; {hint}", fix)


class SetitemOnSavedTensor(Rule):
    code = "GG103"
    name = "setitem-on-saved-tensor"
    summary = "Item or slice assignment into a tensor saved for backward"
    fix_safety = SOMETIMES
    doc = """
## What it does
Finds `x[idx] = v` and `x[idx] += v` where `x` (or a view of it) was saved for
backward by an earlier operation in the same function.

## Why is this bad?
Index assignment is an in-place `copy_`/`index_put_` on `x`; the saved tensor changes
under autograd and `backward()` raises "modified by an inplace operation".

## Example
```python
y = torch.exp(x)
y[:, 0] = 0
```

Use instead:
```python
y = torch.exp(x)
y = y.clone()
y[:, 0] = 0
```

## Fix safety
The fix inserts `x = x.clone()` before the write, so the write lands in a copy.
Safe when `x` is a local that nothing else refers to; unsafe otherwise (other
holders of the original tensor would no longer see the write).
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for w in ctx.facts.writes:
            if w.kind != "setitem" or not w.saves:
                continue
            s = w.saves[0]
            n = _name(w)
            fix = None
            if w.target_name and isinstance(w.stmt, (ast.Assign, ast.AugAssign)):
                fix = ctx.fix("clone_before", w.stmt, w.safe(), f"Insert `{n} = {n}.clone()` before the write")
            yield self.diagnostic(ctx, w.node, f"item assignment into `{n}` after `{s.op}` (line {s.line}) saved it "
                                  f"for backward; clone first: `{n} = {n}.clone()`", fix)


class CtxAttributeTensor(Rule):
    code = "GG104"
    name = "ctx-attribute-tensor"
    summary = "Custom autograd.Function stores a tensor as a ctx attribute"
    doc = """
## What it does
Finds `ctx.<name> = tensor` in the `forward` of a `torch.autograd.Function`
subclass.  Non-tensors (`ctx.dim = dim`, shapes, flags) are fine and not reported.

## Why is this bad?
Tensors kept on `ctx` bypass autograd's saved-tensor machinery: no version check
(an in-place write to the input later silently corrupts the gradient), no
saved-tensor hooks, and a reference cycle that can leak the graph's memory.
`ctx.save_for_backward` checks versions and releases the tensors after backward.

## Example
```python
class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.w = w
        return x.mm(w)
```

Use instead:
```python
class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return x.mm(w)
    # in backward: (w,) = ctx.saved_tensors
```

## Fix safety
No automatic fix: `backward` has to read `ctx.saved_tensors` instead.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for st in ctx.facts.ctx_stores:
            yield self.diagnostic(ctx, st.node, f"`{st.ctx}.{st.attr}` stores a tensor on ctx, bypassing autograd's "
                                  f"version check; use `{st.ctx}.save_for_backward(...)` and `{st.ctx}.saved_tensors`")


class DataWriteOnSavedTensor(Rule):
    code = "GG105"
    name = "data-write-on-saved-tensor"
    summary = "Write through .data to a tensor saved for backward (silently wrong gradients)"
    fix_safety = UNSAFE
    doc = """
## What it does
Finds writes through `.data` (`w.data.mul_(...)`, `w.data[...] = ...`, `w.data = ...`)
to a tensor that an earlier operation in the same function saved for backward, and
NumPy in-place writes (`a -= a.mean()`, `a[i] = v`) to an array whose buffer
`torch.from_numpy(a)` shares with a saved tensor.

## Why is this bad?
`.data` shares storage with the tensor but not its version counter (and NumPy has
none at all), so autograd cannot notice the change: `backward()` runs and returns *wrong gradients* without
any error.

## Example
```python
y = x @ w
w.data.mul_(0.5)
y.sum().backward()   # grad of x uses the halved w
```

Use instead:
```python
y = x @ w
y.sum().backward()
with torch.no_grad():
    w.mul_(0.5)
```

## Fix safety
The fix writes under `torch.no_grad()` on the tensor itself, which bumps the version
counter: the silent corruption becomes the loud "modified by an inplace operation"
error.  That changes behaviour, so the fix is unsafe; move the write after
`backward()` as well.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for w in ctx.facts.writes:
            if w.kind == "numpy" and w.saves:
                s = w.saves[0]
                yield self.diagnostic(ctx, w.node, f"NumPy {w.op_text} writes `{_name(w)}` in place, whose buffer a "
                                      f"tensor shares (`torch.from_numpy`) that `{s.op}` (line {s.line}) saved for "
                                      f"backward: NumPy bumps no version counter, so gradients will be silently "
                                      f"wrong; write to a copy (`{_name(w)} = {_name(w)} - ...`) or after backward")
                continue
            if w.kind != "data" or not w.saves:
                continue
            if w.data_form == "assign" and all(sv.via_data for sv in w.saves):
                continue  # `w.data = t` swaps w's storage; the saved `.data` alias keeps the old one
            s = w.saves[0]
            yield self.diagnostic(ctx, w.node, f"write through `{_name(w)}.data` after `{s.op}` (line {s.line}) saved "
                                  f"`{_name(w)}` for backward: gradients will be silently wrong; write after backward",
                                  _data_fix(ctx, w, False))


class StepBeforeBackward(Rule):
    code = "GG106"
    name = "step-before-backward"
    summary = "optimizer.step() between a forward and the backward of a loss built from it"
    doc = """
## What it does
Finds an `optimizer.step()` (or `scaler.step(opt)`) that runs between the forward
that built a loss and that loss's `backward()` -- the classic GAN bug: the generator
loss is computed from `disc(fake)`, the discriminator optimizer steps, then the
generator loss is backpropagated.  The finding is at the step (the in-place write,
where the runtime report puts it too); the message names the backward's line.

## Why is this bad?
`optimizer.step()` updates parameters in place.  The graph of `loss` saved those
parameters (a linear layer saves its weight to compute the gradient of its input),
so `backward()` raises "modified by an inplace operation" -- or, with `.data`-style
updates, computes gradients against the wrong weights.

## Example
```python
loss_g = bce(disc(fake), ones)
opt_d.zero_grad()
loss_d.backward()
opt_d.step()
loss_g.backward()
```

Use instead:
```python
opt_d.zero_grad()
loss_d.backward()
opt_d.step()
loss_g = bce(disc(fake), ones)   # recompute after the update
loss_g.backward()
```

## Fix safety
No automatic fix: reordering training steps changes what is computed.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for h in ctx.facts.step_hazards:
            # Reported at the step -- the in-place write, as the runtime report does.
            yield self.diagnostic(ctx, h.step or h.backward,
                                  f"`{h.step_text}` updates parameters in place that the graph "
                                  f"of `{h.loss}` (built line {h.loss_line}) saved; its backward at line "
                                  f"{h.backward.lineno} then fails: call `backward()` before the step or recompute "
                                  f"`{h.loss}` after it")


class SequentialInplaceAfterSaving(Rule):
    code = "GG107"
    name = "sequential-inplace-after-saving"
    summary = "inplace=True module right after a module that saves its output in nn.Sequential"
    fix_safety = SAFE
    fix_availability = "always"
    doc = """
## What it does
Finds an `inplace=True` module (`nn.ReLU(inplace=True)`, `nn.Dropout(inplace=True)`,
...) in `nn.Sequential(...)` directly after a module whose backward reads its own
output: `nn.Sigmoid`, `nn.Tanh`, `nn.Softmax`, `nn.LogSoftmax`, `nn.ReLU`, and
`nn.ELU`/`nn.LeakyReLU` when themselves in place.  `nn.Identity` and `nn.Flatten` pass
the same tensor through and are looked across.

After `nn.Linear`, `nn.Conv2d` or `nn.BatchNorm2d` an in-place activation is fine
(they save their input, not their output) and is not reported.

## Why is this bad?
The in-place module overwrites the tensor the previous module saved; `backward()`
raises "modified by an inplace operation".

## Example
```python
head = nn.Sequential(nn.Linear(64, 64), nn.Sigmoid(), nn.ReLU(inplace=True))
```

Use instead:
```python
head = nn.Sequential(nn.Linear(64, 64), nn.Sigmoid(), nn.ReLU())
```

## Fix safety
Safe: inside `nn.Sequential` the module's input is the previous module's output,
which nothing else refers to, so dropping `inplace=True` only costs memory.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for h in ctx.facts.sequential:
            cls = (ast.unparse(h.node.func) if hasattr(ast, "unparse") else "module")
            fix = ctx.fix("drop_inplace", h.node, True, "Remove `inplace=True`")
            yield self.diagnostic(ctx, h.node, f"`{cls}(inplace=True)` overwrites the output of `{h.saver}` "
                                  f"(line {h.saver_line}), which it saved for backward; use `{cls}()`", fix)


class JaxItemAssignment(Rule):
    code = "GG108"
    name = "jax-item-assignment"
    summary = "Item assignment on a jax.numpy array"
    fix_safety = SAFE
    frameworks = frozenset({"jax"})
    doc = """
## What it does
Finds `x[idx] = v` and `x[idx] += v` where `x` is a JAX array (built by `jnp.*`,
`jax.random.*`, arithmetic on JAX arrays, or annotated `jax.Array`).

## Why is this bad?
JAX arrays are immutable: item assignment raises `TypeError` at trace time.  The
functional `.at[idx]` update returns a new array and is differentiable.

## Example
```python
x = jnp.zeros(3)
x[0] = 1.0
```

Use instead:
```python
x = jnp.zeros(3)
x = x.at[0].set(1.0)
```

## Fix safety
Safe: the original raises; the rewrite (`.at[i].set(v)`, `+=` -> `.at[i].add(v)`,
`-=` -> `.add(-v)`, `*=` -> `.multiply(v)`, `/=` -> `.divide(v)`) is the documented equivalent.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for w in ctx.facts.writes:
            if w.kind != "jax_setitem":
                continue
            n = w.target_name or "x"
            stmt = w.stmt
            fix = None
            if w.target_name and isinstance(stmt, (ast.Assign, ast.AugAssign)) and (
                    not isinstance(stmt, ast.Assign) or len(stmt.targets) == 1):
                method = "set"
                if isinstance(stmt, ast.AugAssign):
                    method = {ast.Add: "add", ast.Sub: "add", ast.Mult: "multiply", ast.Div: "divide",
                              ast.Pow: "power"}.get(type(stmt.op), "")
                if method:
                    fix = ctx.fix("jax_at", stmt, True, f"Rewrite as `{n} = {n}.at[...].{method}(...)`")
            yield self.diagnostic(ctx, w.node, f"JAX arrays are immutable; item assignment into `{n}` raises: use "
                                  f"`{n} = {n}.at[...].set(...)`", fix)


class TfAssignInTape(Rule):
    code = "GG109"
    name = "tf-assign-in-tape"
    summary = "Variable.assign* inside tf.GradientTape whose variable is read later in the tape"
    frameworks = frozenset({"tensorflow"})
    doc = """
## What it does
Finds `v.assign(...)`, `v.assign_add(...)` or `v.assign_sub(...)` inside a
`with tf.GradientTape()` block when `v` is read again later in the same block.

## Why is this bad?
`assign` is not differentiable: the tape records a read of the variable's new value
but no path back to what was assigned.  Gradients of the loss with respect to the
inputs of the assigned expression are `None` (or silently missing).

## Example
```python
with tf.GradientTape() as tape:
    h.assign(x @ w)
    loss = tf.reduce_sum(h * 2.0)
grads = tape.gradient(loss, [w])   # [None]
```

Use instead:
```python
with tf.GradientTape() as tape:
    h_val = x @ w
    loss = tf.reduce_sum(h_val * 2.0)
grads = tape.gradient(loss, [w])
h.assign(h_val)
```

## Fix safety
No automatic fix.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for e in ctx.facts.tape_events:
            if e.kind == "assign":
                yield self.diagnostic(ctx, e.node, f"`{e.text}()` inside `tf.GradientTape` cuts the gradient path to "
                                      f"later reads of the variable; compute with tensors and assign after the tape")


class TfNumpyInTape(Rule):
    code = "GG110"
    name = "tf-numpy-in-tape"
    summary = ".numpy() round trip inside tf.GradientTape"
    frameworks = frozenset({"tensorflow"})
    doc = """
## What it does
Finds `.numpy()` calls inside a `with tf.GradientTape()` block, except inside
`print(...)`, logging calls and f-strings.

## Why is this bad?
`.numpy()` copies the value out of TensorFlow; anything computed from the NumPy array
is a constant to the tape, so no gradient flows back through it.

## Example
```python
with tf.GradientTape() as tape:
    y = np.tanh((x @ w).numpy())
    loss = tf.reduce_sum(tf.constant(y))
```

Use instead:
```python
with tf.GradientTape() as tape:
    y = tf.tanh(x @ w)
    loss = tf.reduce_sum(y)
```

## Fix safety
No automatic fix.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for e in ctx.facts.tape_events:
            if e.kind == "numpy":
                yield self.diagnostic(ctx, e.node, f"`{e.text}` inside `tf.GradientTape` leaves the graph: no gradient "
                                      f"flows through it; keep the computation in TensorFlow ops")


class InplaceOnLeaf(Rule):
    code = "GG111"
    name = "inplace-on-leaf"
    summary = "In-place write to a leaf tensor that requires grad, outside torch.no_grad()"
    fix_safety = SOMETIMES
    doc = """
## What it does
Finds in-place writes (`s -= lr * s.grad`, `p.fill_(1)`, `p[0] = 0`,
`torch.clamp(a, 0, 1, out=a)`, writes into a view such as `p.chunk(4)[1].fill_(1)`)
to a leaf tensor that requires grad -- created with `requires_grad=True`, an
`nn.Parameter(...)`, or a parameter from `.parameters()` / `.named_parameters()` --
outside `torch.no_grad()`.  `nn.init.*_` functions are not reported (they run
under `no_grad` themselves).

## Why is this bad?
PyTorch refuses at once: "a leaf Variable that requires grad is being used in an
in-place operation" (or, for `out=`, "functions with out=... arguments don't support
automatic differentiation").  Updates to parameters belong under `torch.no_grad()`;
a new value belongs in a new tensor.

## Example
```python
s = torch.randn(3, requires_grad=True)
s.sum().backward()
s -= 0.1 * s.grad
```

Use instead:
```python
s = torch.randn(3, requires_grad=True)
s.sum().backward()
with torch.no_grad():
    s -= 0.1 * s.grad
```

## Fix safety
The fix rewrites the write out of place (`s = s - 0.1 * s.grad`) where a twin
exists: the program stops raising, but `s` is then no longer the leaf an optimizer
or a caller holds, so it is unsafe for anything but a local that nothing else
refers to.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for w in ctx.facts.writes:
            if w.kind not in _LEAF_WRITE_KINDS or w.in_no_grad or not w.target.leaf:
                continue
            if w.kind == "torch_func" and (w.method or "").startswith("torch.nn.init."):
                continue
            fix, hint = _out_of_place_fix(ctx, w) if w.kind != "setitem" else (None, "")
            hint = hint if fix is not None else ""
            what = _describe(w) if w.kind != "setitem" else f"item assignment into `{_name(w)}`"
            yield self.diagnostic(ctx, w.node, f"{what} writes in place to a leaf that requires grad "
                                  f"({w.target.leaf}): PyTorch raises at once; do it under `torch.no_grad()`"
                                  f"{' or ' + hint if hint else ''}", fix)


class InplaceOnMultiOutputView(Rule):
    code = "GG112"
    name = "inplace-on-multi-output-view"
    summary = "In-place write to an output of split/chunk/unbind that requires grad"
    fix_safety = SOMETIMES
    doc = """
## What it does
Finds in-place writes to the outputs of `split`, `chunk`, `unbind`, `tensor_split`
(`q, k, v = qkv.unbind(0)` then `q *= scale`; `x.chunk(2)[0].add_(1)`) when the
split tensor may require grad and grad is enabled.

## Why is this bad?
These functions return several views of one tensor from one backward node; PyTorch
rejects an in-place write to any of them at once: "Output 0 of UnbindBackward0 is a
view and is being modified inplace. This view is the output of a function that
returns multiple views. Such functions do not allow the output views to be modified
inplace".

## Example
```python
q, k, v = qkv.unbind(0)
q *= 0.125
```

Use instead:
```python
q, k, v = qkv.unbind(0)
q = q * 0.125
```

## Fix safety
The fix writes out of place (`q = q * 0.125`).  Safe when the view is a local name
nothing else refers to: the in-place form could not have run with grad enabled, and
without grad the values are the same.
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for w in ctx.facts.writes:
            t = w.target
            if (w.kind not in _LEAF_WRITE_KINDS or w.in_no_grad or not t.multi_view or t.leaf
                    or t.nograd or t.via_data or t.obj is None or t.obj.kind != "tensor"):
                continue
            fix, hint = _out_of_place_fix(ctx, w) if w.kind != "setitem" else (None, "clone it first")
            what = _describe(w) if w.kind != "setitem" else f"item assignment into `{_name(w)}`"
            yield self.diagnostic(ctx, w.node, f"{what} writes in place to an output of {t.multi_view}, which "
                                  f"returns several views of one tensor: with grad enabled PyTorch raises at once; "
                                  f"{hint}", fix)


class DdpForwardTwiceBeforeBackward(Rule):
    code = "GG113"
    name = "ddp-forward-twice-before-backward"
    summary = "DistributedDataParallel model called again before the backward of its first forward's loss"
    doc = """
## What it does
Finds a `DistributedDataParallel` model (built in the same function as
`DistributedDataParallel(net)` / `DDP(net)`, buffer broadcast left on: the default)
that is called a second time before the `backward()` of a loss built from its first
call -- the GAN discriminator's `disc(fake)` and `disc(real)` with one combined
backward, a siamese pair, a loss summed over a loop of forwards.  The finding is at
the second forward (where the write happens); the message names the first forward
and the backward.  Not reported: `broadcast_buffers=False` (or
`forward_sync_buffers=False`), a backward between the forwards, a first forward
inside `with model.no_sync():`, a loss built only from the last forward, a model
without DDP.  A second forward under `torch.no_grad()` *is* reported: the first
forward armed the broadcast, and DDP runs it whatever the grad mode.

## Why is this bad?
Before each forward that follows a forward with grad enabled, DDP broadcasts the
module's buffers from rank 0 into every replica, in place.  BatchNorm's
`running_mean`/`running_var` (and any registered buffer an op multiplies with) were
saved by the first forward's graph, so the broadcast bumps their version and
`backward()` raises "one of the variables needed for gradient computation has been
modified by an inplace operation: [torch.FloatTensor [C]] is at version N; expected
version N-1" -- on PyTorch 2.6 and later releases until pytorch/pytorch#175851 (which
preserves the buffers' version counters during the broadcast), and before 1.11.  It
happens with any world size, one process included.

## Example
```python
model = torch.nn.parallel.DistributedDataParallel(disc)
out_fake = model(fake)
out_real = model(real)
loss = bce(out_fake, zeros) + bce(out_real, ones)
loss.backward()
```

Use instead:
```python
model = torch.nn.parallel.DistributedDataParallel(disc, broadcast_buffers=False)
out_fake = model(fake)
out_real = model(real)
loss = bce(out_fake, zeros) + bce(out_real, ones)
loss.backward()
```
or one forward on the concatenated batch (`model(torch.cat([fake, real]))`, which
changes BatchNorm's batch statistics), or `backward()` after each forward, or
BatchNorm converted with `torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)`
before wrapping (its running statistics are synchronised by the forward itself).

## Fix safety
No automatic fix: each remedy changes what is computed or synchronised
(`broadcast_buffers=False` lets the replicas' running statistics drift apart).
"""

    def check(self, ctx: FileContext) -> Iterator[Diagnostic]:
        for h in ctx.facts.ddp_hazards:
            if h.first is h.second:
                where = "in the previous loop iteration"
            elif h.first.lineno == h.second.lineno:
                where = "earlier on this line"
            else:
                where = f"at line {h.first.lineno}"
            yield self.diagnostic(ctx, h.second, f"second forward of DistributedDataParallel model `{h.model}` "
                                  f"(the first {where}) broadcasts its buffers in place -- BatchNorm running "
                                  f"stats the first forward's graph saved -- so the backward at line "
                                  f"{h.backward.lineno} fails: pass `broadcast_buffers=False`, run one forward on "
                                  f"the concatenated batch, or call `backward()` after each forward")


_LEAF_WRITE_KINDS = ("method", "torch_func", "augassign", "inplace_kw", "setitem", "out")
