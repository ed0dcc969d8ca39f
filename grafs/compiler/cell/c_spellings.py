"""How the C cell kernels spell each base op: every value is a GCC vector of fp32 lanes; K(c) is a
constant vector, sel(mask, a, b) a select, v* the vector math of glibc's libmvec (or vector
helpers of the kernel prelude). Same numerics as the Triton spellings."""
from grafs.ops.table import SELU_ALPHA, SELU_SCALE

_C_CLAMP = "vmin(vmax({0}, {1}), {2})"
SPELLINGS: dict[str, str] = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "neg": "(-{0})", "pow": "vpow({0}, {1})",
    "exp": "vexp({0})", "log": "vlog({0})", "sqrt": "vsqrt({0})", "abs": "vabs({0})",
    "sign": "sel({0} > K(0), K(1), sel({0} < K(0), K(-1), K(0)))",
    "step": "sel({0} > K(0), K(1), K(0))",
    "sin": "vsin({0})", "cos": "vcos({0})", "sinh": "vsinh({0})", "cosh": "vcosh({0})",
    "tanh": "vtanh({0})", "asinh": "vasinh({0})", "atan": "vatan({0})", "erf": "verf({0})",
    "max": "vmax({0}, {1})", "min": "vmin({0}, {1})", "clamp": _C_CLAMP,
    "sigmoid": "vsigmoid({0})", "softplus": "vsoftplus({0})", "relu": "vmax({0}, K(0))",
    "leaky_relu": "sel({0} > K(0), {0}, {0} * {1})",
    "elu": "sel({0} > K(0), {0}, {1} * vexpm1({0}))",
    "gelu": "(K(0.5) * {0} * (K(1) + verf({0} * K(0.7071067811865476))))",
    "silu": "({0} * vsigmoid({0}))",
    "mish": "({0} * vtanh(vsoftplus({0})))",
    "selu": f"(K({SELU_SCALE!r}) * sel({{0}} > K(0), {{0}}, K({SELU_ALPHA!r}) * vexpm1({{0}})))",
    "softsign": "({0} / (K(1) + vabs({0})))",
    "hardsigmoid": "(vmin(vmax({0} + K(3), K(0)), K(6)) / K(6))",
    "hardswish": "({0} * vmin(vmax({0} + K(3), K(0)), K(6)) / K(6))",
    "hardtanh": _C_CLAMP.format("{0}", "K(-1)", "K(1)"),
    "relu6": _C_CLAMP.format("{0}", "K(0)", "K(6)"),
    "logsigmoid": "(vmin({0}, K(0)) - vlog1p(vexp(-vabs({0}))))",
}
