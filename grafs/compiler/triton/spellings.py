"""How the Triton kernels spell each base op ({0}, {1}, … are fp32 values: names or numeric
literals). Numerically safe forms: expm1/log1p, softplus with torch's threshold 20,
logsigmoid without overflow; max/min propagate NaN like torch. An op without a spelling
(here or in its ``Op.triton``) makes the Triton backend raise."""
from grafs.ops.table import SELU_ALPHA, SELU_SCALE

_SOFTPLUS_TL = "tl.where({0} > 20.0, {0}, libdevice.log1p(tl.exp({0})))"
_NAN = "propagate_nan=tl.PropagateNan.ALL"   # NaN in, NaN out, as torch.maximum/clamp/relu


def _tl_clamp(lo, hi):
    return f"tl.minimum(tl.maximum({{0}}, {lo}, {_NAN}), {hi}, {_NAN})"


SPELLINGS: dict[str, str] = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "neg": "(-{0})", "pow": "libdevice.pow({0}, {1})",
    "exp": "tl.exp({0})", "log": "tl.log({0})", "sqrt": "tl.sqrt_rn({0})", "abs": "tl.abs({0})",
    "sign": "tl.where({0} > 0, 1.0, tl.where({0} < 0, -1.0, 0.0))",
    "step": "tl.where({0} > 0, 1.0, 0.0)",
    "sin": "tl.sin({0})", "cos": "tl.cos({0})", "sinh": "libdevice.sinh({0})",
    "cosh": "libdevice.cosh({0})", "tanh": "libdevice.tanh({0})", "asinh": "libdevice.asinh({0})",
    "atan": "libdevice.atan({0})", "erf": "tl.erf({0})",
    "max": f"tl.maximum({{0}}, {{1}}, {_NAN})", "min": f"tl.minimum({{0}}, {{1}}, {_NAN})",
    "clamp": _tl_clamp("{1}", "{2}"),
    "sigmoid": "tl.sigmoid({0})", "softplus": _SOFTPLUS_TL,
    "relu": f"tl.maximum({{0}}, 0.0, {_NAN})",
    "leaky_relu": "tl.where({0} > 0, {0}, {0} * {1})",
    "elu": "tl.where({0} > 0, {0}, {1} * libdevice.expm1({0}))",
    "gelu": "(0.5 * {0} * (1.0 + tl.erf({0} * 0.7071067811865476)))",
    "silu": "({0} * tl.sigmoid({0}))",
    "mish": "({0} * libdevice.tanh(" + _SOFTPLUS_TL + "))",
    "selu": f"({SELU_SCALE!r} * tl.where({{0}} > 0, {{0}}, {SELU_ALPHA!r} * libdevice.expm1({{0}})))",
    "softsign": "({0} / (1.0 + tl.abs({0})))",
    "hardsigmoid": "(" + _tl_clamp(0.0, 6.0).replace("{0}", "({0} + 3.0)") + " / 6.0)",
    "hardswish": "({0} * " + _tl_clamp(0.0, 6.0).replace("{0}", "({0} + 3.0)") + " / 6.0)",
    "hardtanh": _tl_clamp(-1.0, 1.0),
    "relu6": _tl_clamp(0.0, 6.0),
    "logsigmoid": f"(tl.minimum({{0}}, 0.0, {_NAN}) - libdevice.log1p(tl.exp(-tl.abs({{0}}))))",
}
