"""What autograd saves, per operation.

Every entry here was checked against real autograd (torch 2.x): run the op on
non-leaf tensors, bump the version of the input / the other operand / the output
with an in-place write, call backward, and see whether autograd complains.  Only
ops whose behaviour is certain are listed -- an op missing from these tables is
treated as "saves nothing", which keeps the rules quiet rather than noisy.
"""
from __future__ import annotations

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
INPUT_SAVING_UNLESS_INPLACE: frozenset[str] = frozenset({"ELU", "CELU", "SELU", "LeakyReLU", "RReLU", "ReLU6", "Hardtanh"})
# Modules that return their input (or a view of it): the tensor passes through.
PASSTHROUGH_MODULES: frozenset[str] = frozenset({"Identity", "Flatten", "Unflatten"})
# Modules accepting inplace=True.
INPLACE_MODULES: frozenset[str] = frozenset(
    {"ReLU", "ReLU6", "ELU", "SELU", "CELU", "LeakyReLU", "Hardtanh", "Hardsigmoid",
     "Hardswish", "SiLU", "Mish", "RReLU", "Threshold", "Dropout", "Dropout1d",
     "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
)

# torch.nn.functional functions with an `inplace` parameter -> its positional index.
FUNCTIONAL_INPLACE_ARG: dict[str, int] = {
    "relu": 1, "relu6": 1, "selu": 1, "silu": 1, "mish": 1, "hardsigmoid": 1,
    "hardswish": 1, "elu": 2, "celu": 2, "leaky_relu": 2, "threshold": 3,
    "hardtanh": 3, "rrelu": 4, "dropout": 3, "dropout1d": 3, "dropout2d": 3,
    "dropout3d": 3, "alpha_dropout": 3, "feature_alpha_dropout": 3,
}
# With inplace=True these functionals save their output (checked like the modules).
FUNCTIONAL_OUTPUT_SAVING_WHEN_INPLACE: frozenset[str] = frozenset(
    {"relu", "elu", "celu", "selu", "leaky_relu", "rrelu"}
)

# In-place Tensor methods that have an out-of-place twin (`name[:-1]`) with the
# same meaning, so `x.op_(a)` can become `x = x.op(a)`.
INPLACE_WITH_TWIN: frozenset[str] = frozenset(
    """abs_ absolute_ acos_ acosh_ add_ addbmm_ addcdiv_ addcmul_ addmm_ addmv_ addr_
    arccos_ arccosh_ arcsin_ arcsinh_ arctan2_ arctan_ arctanh_ asin_ asinh_ atan2_ atan_
    atanh_ baddbmm_ bitwise_and_ bitwise_left_shift_ bitwise_not_ bitwise_or_
    bitwise_right_shift_ bitwise_xor_ ceil_ clamp_ clamp_max_ clamp_min_ clip_
    copysign_ cos_ cosh_ cumprod_ cumsum_ deg2rad_ digamma_ div_ divide_ eq_ erf_ erfc_
    erfinv_ exp2_ exp_ expm1_ fix_ float_power_ floor_ floor_divide_ fmod_ frac_ gcd_ ge_
    greater_ greater_equal_ gt_ heaviside_ hypot_ i0_ igamma_ igammac_ index_add_
    index_copy_ index_fill_ index_put_ index_reduce_ lcm_ ldexp_ le_ lerp_ less_
    less_equal_ lgamma_ log10_ log1p_ log2_ log_ logical_and_ logical_not_ logical_or_
    logical_xor_ logit_ lt_ masked_fill_ masked_scatter_ mul_ multiply_ mvlgamma_
    nan_to_num_ ne_ neg_ negative_ nextafter_ not_equal_ polygamma_ pow_ put_ rad2deg_
    reciprocal_ relu_ remainder_ renorm_ round_ rsqrt_ scatter_ scatter_add_
    scatter_reduce_ sgn_ sigmoid_ sign_ sin_ sinc_ sinh_ sqrt_ square_ sub_ subtract_
    tan_ tanh_ tril_ triu_ true_divide_ trunc_ xlogy_""".split()
)
# In-place writes without an out-of-place twin of the same meaning.
INPLACE_NO_TWIN: frozenset[str] = frozenset(
    {"zero_", "fill_", "copy_", "normal_", "uniform_", "random_", "exponential_",
     "geometric_", "cauchy_", "log_normal_", "bernoulli_", "set_", "fill_diagonal_",
     "map_", "apply_", "map2_"}
)
INPLACE_METHODS: frozenset[str] = INPLACE_WITH_TWIN | INPLACE_NO_TWIN

# torch.relu_(x) style in-place functions (first argument is written).
INPLACE_TORCH_FUNCS: frozenset[str] = frozenset(
    {"torch.relu_", "torch.sigmoid_", "torch.tanh_", "torch.exp_", "torch.nn.functional.relu_",
     "torch.nn.functional.elu_", "torch.nn.functional.leaky_relu_", "torch.nn.functional.hardtanh_",
     "torch.nn.functional.threshold_", "torch.nn.functional.rrelu_", "torch.nn.functional.celu_",
     "torch.nn.functional.selu_"}
)

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
