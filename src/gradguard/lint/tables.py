"""What autograd saves, per operation.

Every entry here was checked against real autograd (torch 2.x): run the op on
non-leaf tensors, bump the version of the input / the other operand / the output
with an in-place write, call backward, and see whether autograd complains.  Only
ops whose behaviour is certain are listed -- an op missing from these tables is
treated as "saves nothing", which keeps the rules quiet rather than noisy.
"""
from __future__ import annotations

from gradguard._findings import twins as _twins

# Ops whose backward reads their *output*: an in-place write to the result breaks
# backward.  Keys are qualified function names; methods use the bare name.
OUTPUT_SAVING_FUNCS: frozenset[str] = frozenset(
    f"{prefix}.{name}"
    for prefix in ("torch", "torch.special", "torch.nn.functional")
    for name in (
        "sigmoid", "tanh", "exp", "exp2", "expm1", "softmax", "log_softmax", "sqrt",
        "rsqrt", "reciprocal", "relu", "expit", "softmin",
    )
)
OUTPUT_SAVING_METHODS: frozenset[str] = frozenset(
    {"sigmoid", "tanh", "exp", "exp2", "expm1", "softmax", "log_softmax", "sqrt",
     "rsqrt", "reciprocal", "relu"}
)

# Ops whose backward reads their tensor *inputs* (all tensor arguments).
INPUT_SAVING_FUNCS: frozenset[str] = frozenset(
    [f"torch.{n}" for n in (
        "matmul", "mm", "bmm", "mv", "einsum", "baddbmm", "addmm", "addbmm", "outer",
        "log", "log2", "log10", "log1p", "sin", "cos", "tan", "asin", "acos", "atan",
        "atan2", "sinh", "cosh", "erf", "erfinv", "abs", "square", "clamp", "clip",
        "pow", "var", "std", "norm", "prod", "minimum", "maximum", "cdist", "dist",
        "layer_norm", "group_norm", "batch_norm", "instance_norm", "conv1d", "conv2d",
        "conv3d", "cosine_similarity", "mul", "div", "true_divide", "inner", "dot",
        "tensordot", "kron", "lerp", "xlogy", "hypot",
    )]
    + [f"torch.nn.functional.{n}" for n in (
        "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
        "conv_transpose2d", "conv_transpose3d", "layer_norm", "group_norm",
        "batch_norm", "instance_norm", "rms_norm", "gelu", "silu", "mish", "softplus",
        "elu", "selu", "celu", "leaky_relu", "hardtanh", "relu6", "logsigmoid",
        "hardsigmoid", "hardswish", "normalize", "cosine_similarity",
        "scaled_dot_product_attention", "mse_loss", "l1_loss", "smooth_l1_loss",
        "huber_loss", "glu", "prelu",
    )]
)
INPUT_SAVING_METHODS: frozenset[str] = frozenset(
    {"matmul", "mm", "bmm", "mv", "log", "log2", "log10", "log1p", "sin", "cos", "tan",
     "asin", "acos", "atan", "sinh", "cosh", "erf", "abs", "square", "clamp", "clip",
     "pow", "var", "std", "norm", "prod", "outer", "dot", "inner"}
)
# Binary methods that save the receiver only when the other operand is a tensor.
TENSOR_OPERAND_METHODS: frozenset[str] = frozenset({"mul", "div", "true_divide", "multiply", "divide"})

# nn modules (by class name) whose forward saves the input / the output.
INPUT_SAVING_MODULES: frozenset[str] = frozenset(
    {"Linear", "Bilinear", "LazyLinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
     "ConvTranspose2d", "ConvTranspose3d", "LazyConv1d", "LazyConv2d", "LazyConv3d",
     "LayerNorm", "GroupNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
     "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "GELU",
     "SiLU", "Mish", "Softplus", "Hardswish", "Hardsigmoid", "LSTM", "GRU", "RNN",
     "MultiheadAttention", "PReLU", "GLU", "LogSigmoid"}
)
# Modules saving their output (always), and those that save it only when inplace=True.
OUTPUT_SAVING_MODULES: frozenset[str] = frozenset(
    {"ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Softmin"}
)
OUTPUT_SAVING_WHEN_INPLACE: frozenset[str] = frozenset({"ELU", "CELU", "SELU", "LeakyReLU", "RReLU"})
# Without inplace=True these save their input instead.
INPUT_SAVING_UNLESS_INPLACE: frozenset[str] = frozenset({"ELU", "CELU", "SELU", "LeakyReLU", "RReLU", "ReLU6",
                                                        "Hardtanh"})
# Modules that return their input (or a view of it): the tensor passes through.
PASSTHROUGH_MODULES: frozenset[str] = frozenset({"Identity", "Flatten", "Unflatten"})
# Modules accepting inplace=True.
INPLACE_MODULES: frozenset[str] = frozenset(
    {"ReLU", "ReLU6", "ELU", "SELU", "CELU", "LeakyReLU", "Hardtanh", "Hardsigmoid",
     "Hardswish", "SiLU", "Mish", "RReLU", "Threshold", "Dropout", "Dropout1d",
     "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
)

FUNCTIONAL_INPLACE_ARG: dict[str, int] = _twins.FUNCTIONAL_INPLACE_ARG
# With inplace=True these functionals save their output (checked like the modules).
FUNCTIONAL_OUTPUT_SAVING_WHEN_INPLACE: frozenset[str] = frozenset(
    {"relu", "elu", "celu", "selu", "leaky_relu", "rrelu"}
)

# In-place writes: the twin knowledge lives in gradguard._findings.twins.
INPLACE_WITH_TWIN: frozenset[str] = frozenset(_twins.METHOD_TWINS)
INPLACE_NO_TWIN: frozenset[str] = _twins.INPLACE_METHODS - INPLACE_WITH_TWIN
INPLACE_METHODS: frozenset[str] = _twins.INPLACE_METHODS

# torch.relu_(x) style in-place functions (first argument is written).
INPLACE_TORCH_FUNCS: frozenset[str] = frozenset(_twins.FUNCTION_TWINS)

# Methods returning a view (or a tensor sharing the version counter): writes
# through the result are writes to the base.
VIEW_METHODS: frozenset[str] = frozenset(
    {"view", "view_as", "reshape", "reshape_as", "transpose", "t", "permute", "squeeze",
     "unsqueeze", "expand", "expand_as", "narrow", "select", "unflatten", "flatten",
     "detach", "unfold", "diagonal", "movedim", "moveaxis", "swapaxes", "swapdims",
     "split", "chunk", "unbind", "as_strided", "real", "imag", "mT", "T", "H", "mH"}
)
# Methods/attributes that produce a new tensor which does not alias the receiver.
TENSOR_METHODS: frozenset[str] = frozenset(
    {"clone", "contiguous", "float", "half", "double", "bfloat16", "int", "long", "bool",
     "to", "cuda", "cpu", "type_as", "sum", "mean", "add", "sub", "masked_fill",
     "softmax", "log_softmax", "matmul", "mm", "bmm", "exp", "log", "sigmoid", "tanh",
     "relu", "sqrt", "rsqrt", "abs", "neg", "pow", "clamp", "max", "min", "amax", "amin",
     "argmax", "argmin", "cumsum", "repeat", "repeat_interleave", "gather", "index_select",
     "masked_select", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor",
     "mul", "div", "square", "norm", "var", "std", "prod", "where", "roll", "flip",
     "triu", "tril", "any", "all", "sign", "round", "floor", "ceil", "eq", "ne", "gt",
     "lt", "ge", "le", "logical_not", "logical_and", "logical_or", "type", "requires_grad_"}
)
# Attribute reads / methods that leave tensor-land (no write can reach the tensor).
NON_TENSOR_RESULTS: frozenset[str] = frozenset(
    {"shape", "size", "dim", "ndim", "numel", "item", "tolist", "numpy", "dtype",
     "device", "is_cuda", "requires_grad", "grad_fn", "stride", "data_ptr",
     "element_size", "nelement", "is_contiguous", "storage_offset", "names", "layout"}
)
# torch.* callables that do not return a tensor.
TORCH_NON_TENSOR_PREFIXES: tuple[str, ...] = (
    "torch.is_", "torch.cuda", "torch.backends", "torch.get_", "torch.set_", "torch.device",
    "torch.dtype", "torch.Size", "torch.finfo", "torch.iinfo", "torch.jit", "torch.no_grad",
    "torch.enable_grad", "torch.inference_mode", "torch.autocast", "torch.compile",
    "torch.distributed", "torch.utils", "torch.nn.Module", "torch.nn.Sequential",
    "torch.nn.ModuleList", "torch.nn.ModuleDict", "torch.optim", "torch.manual_seed",
    "torch.load", "torch.save", "torch.hub", "torch.fx", "torch.export", "torch.library",
    "torch.compiler", "torch._", "torch.overrides", "torch.testing", "torch.amp",
    "torch.nn.init", "torch.nn.utils", "torch.nn.parameter", "torch.autograd",
)
