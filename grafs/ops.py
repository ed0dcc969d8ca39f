"""The op registry: the single source of truth for every op grafs knows.

Each :class:`Op` declares its canonical name and aliases, arity (tensor arguments) and trailing
numeric scalars (e.g. the slope of ``leaky_relu``), the torch implementation, the sympy
counterpart (in elementary functions), the derivative (as expressions over registry ops, for
the chain rule), the Python-export template, whether the output is bounded and how it is
clipped when bounded-op clipping is on. The grammar, printers, sympy bridge, compiler backends
and the GRAFS search space all read these tables; nothing else hard-codes an op.

:data:`SEARCH_OPS` declares the 23 unary and 9 binary candidate ops of the GRAFS cell
(seeds/001 Fig. 1; definitions and clipping as the reference code), each built from
registry ops, with its learnable γ and their initialisation; :data:`EXTRA_UNARY` (``sin``,
``cos``) are further candidates outside the paper's space, used only when a space asks for them.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import sympy as sp
import torch
import torch.nn.functional as F

from grafs.errors import GrafsError

SQRT2 = math.sqrt(2.0)
SQRT2PI = math.sqrt(2.0 * math.pi)
# SELU constants (Klambauer et al. 2017), as torch uses them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class Scalar:
    """A trailing numeric argument of an op (a number or a learnable ``{param}``, never x)."""
    name: str
    default: float


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    torch: Callable                      # (*tensor_args, *scalars) -> Tensor
    sympy: Callable                      # (*sympy_args) -> sympy expr, elementary functions
    grad: Callable | None                # (*arg_exprs) -> partials w.r.t. the tensor args
    py: str                              # Python-export template ({0}, {1}, … are the arguments)
    aliases: tuple[str, ...] = ()
    scalars: tuple[Scalar, ...] = ()
    display: str | None = None           # sympy/LaTeX function name (GELU, LeakyReLU, …)
    sympy_native: Callable | None = None # a sympy function that keeps the op symbolic
    bounded: bool = False                # |output| bounded for every input
    clip: Callable | None = None         # (args, ell) -> clipped Expr, for clip=True
    py_tensor_scalars: str | None = None # export template when a scalar is a learnable tensor
    triton: str | None = None            # Triton expression template (tl./libdevice, fp32 args)
    c: str | None = None                 # C SIMD-vector expression template (grafs.compiler.c_emit)
    infix: str | None = None             # + - * / ^ for the printers
    doc: str = ""
    # trainable families (grafs.activations): the compiler instantiates module() per node and
    # calls it with module_inputs(node) (Exprs, e.g. the wrapped expression, x, its derivative)
    module: Callable | None = None
    module_inputs: Callable | None = None

    def arity_text(self) -> str:
        names = ["a", "b", "c"][: self.arity] if self.arity > 1 else ["x"]
        sig = ", ".join(names + [f"{s.name}={s.default:g}" for s in self.scalars])
        n = (f"{self.arity} argument{'s' if self.arity > 1 else ''}" if not self.scalars
             else f"{self.arity} to {self.arity + len(self.scalars)} arguments")
        return f"{n}: {self.name}({sig})"


# ---------------------------------------------------------------------------------------
# helpers used in the tables below
def _c(name, *args):
    from grafs.grammar.expr import call
    return call(name, *args)


def _is_num(v) -> bool:
    return isinstance(v, float)


def _maximum(a, b):
    if _is_num(b):
        return torch.clamp(a, min=b)
    if _is_num(a):
        return torch.clamp(b, min=a)
    return torch.maximum(a, b)


def _minimum(a, b):
    if _is_num(b):
        return torch.clamp(a, max=b)
    if _is_num(a):
        return torch.clamp(b, max=a)
    return torch.minimum(a, b)


def _leaky(a, s):
    return F.leaky_relu(a, s) if _is_num(s) else torch.where(a > 0, a, a * s)


def _elu(a, alpha):
    return F.elu(a, alpha) if _is_num(alpha) else torch.where(a > 0, a, alpha * torch.expm1(a))


def _clamp(a, lo, hi):
    if _is_num(lo) and _is_num(hi):
        return torch.clamp(a, lo, hi)
    return torch.minimum(torch.maximum(a, torch.as_tensor(lo, dtype=a.dtype, device=a.device)),
                         torch.as_tensor(hi, dtype=a.dtype, device=a.device))


def _pow(a, b):
    if _is_num(b):
        if b == 2.0:
            return a * a
        if b == 3.0:
            return a * a * a
    return torch.pow(a, b)


def _step(a):
    return (a > 0).to(a.dtype)


def _pw(pos, neg, a):
    return sp.Piecewise((pos, a > 0), (neg, True))


def _sig(a):
    return 1 / (1 + sp.exp(-a))


def _softplus_sp(a):
    return sp.log(1 + sp.exp(a))


def _clip_in(lo, hi):
    """Clip by clamping the (single) argument into [lo(ell), hi(ell)]."""
    def rule(args, ell):
        (a, *rest) = args
        return [_c("clamp", a, lo(ell), hi(ell)), *rest]
    return rule


def _clip_exp(args, ell):
    return [_c("min", args[0], math.log(ell))]


def _clip_pow(args, ell):
    base, ex = args
    if ex.is_const and ex.value > 1:
        r = ell ** (1.0 / ex.value)
        return [_c("clamp", base, -r, r), ex]
    return None  # clip the output instead


def _clip_mul(args, ell):
    """Clamp each factor to ±sqrt(ell) when both depend on x and neither is bounded (the
    reference clips a·b this way; products with a constant or a bounded factor don't explode)."""
    a, b = args
    if _bounded(a) or _bounded(b):
        return args
    r = math.sqrt(ell)
    return [_c("clamp", a, -r, r), _c("clamp", b, -r, r)]


def _bounded(e) -> bool:
    if not e.depends_on_x():
        return True
    return e.op in OPS and OPS[e.op].bounded


def _output_clip(args, ell):
    return None


# ---------------------------------------------------------------------------------------
# The registry. Keep entries short; the fields are documented on Op.
_OP_LIST: list[Op] = [
    # arithmetic -------------------------------------------------------------------------
    Op("add", 2, lambda a, b: a + b, lambda a, b: a + b, lambda a, b: (1.0, 1.0),
       "({0} + {1})", infix="+", doc="a + b"),
    Op("sub", 2, lambda a, b: a - b, lambda a, b: a - b, lambda a, b: (1.0, -1.0),
       "({0} - {1})", infix="-", doc="a - b"),
    Op("mul", 2, lambda a, b: a * b, lambda a, b: a * b, lambda a, b: (b, a),
       "({0} * {1})", infix="*", clip=_clip_mul, doc="a·b"),
    Op("div", 2, lambda a, b: a / b, lambda a, b: a / b,
       lambda a, b: (1.0 / b, -a / (b * b)), "({0} / {1})", infix="/", clip=_output_clip,
       doc="a / b"),
    Op("neg", 1, lambda a: -a, lambda a: -a, lambda a: (-1.0,), "(-{0})", doc="-x"),
    Op("pow", 2, _pow, lambda a, b: a ** b,
       lambda a, b: (b * _c("pow", a, b - 1.0), _c("pow", a, b) * _c("log", a)),
       "torch.pow({0}, {1})", infix="^", clip=_clip_pow, doc="a^b (also a**b)"),
    # elementary functions ---------------------------------------------------------------
    Op("exp", 1, torch.exp, sp.exp, lambda a: (_c("exp", a),), "torch.exp({0})",
       sympy_native=sp.exp, clip=_clip_exp, doc="e^x; clipped: input ≤ ln ℓ"),
    Op("log", 1, torch.log, sp.log, lambda a: (1.0 / a,), "torch.log({0})", aliases=("ln",),
       sympy_native=sp.log, clip=_output_clip, doc="natural logarithm"),
    Op("sqrt", 1, torch.sqrt, sp.sqrt, lambda a: (0.5 / _c("sqrt", a),), "torch.sqrt({0})",
       sympy_native=sp.sqrt, doc="square root"),
    Op("abs", 1, torch.abs, sp.Abs, lambda a: (_c("sign", a),), "torch.abs({0})",
       sympy_native=sp.Abs, doc="|x|"),
    Op("sign", 1, torch.sign, sp.sign, lambda a: (0.0,), "torch.sign({0})", aliases=("sgn",),
       sympy_native=sp.sign, bounded=True, doc="sign(x) ∈ {-1, 0, 1}"),
    Op("step", 1, _step, lambda a: _pw(1, 0, a), lambda a: (0.0,), "({0} > 0).to({0}.dtype)",
       aliases=("heaviside",), display="step", bounded=True,
       doc="1 for x > 0 else 0 (the derivative of relu)"),
    Op("sin", 1, torch.sin, sp.sin, lambda a: (_c("cos", a),), "torch.sin({0})",
       sympy_native=sp.sin, bounded=True, doc="sine"),
    Op("cos", 1, torch.cos, sp.cos, lambda a: (-_c("sin", a),), "torch.cos({0})",
       sympy_native=sp.cos, bounded=True, doc="cosine"),
    Op("sinh", 1, torch.sinh, sp.sinh, lambda a: (_c("cosh", a),), "torch.sinh({0})",
       sympy_native=sp.sinh, clip=_clip_in(lambda l: -math.asinh(l), lambda l: math.asinh(l)),
       doc="hyperbolic sine; clipped: input within ±asinh ℓ"),
    Op("cosh", 1, torch.cosh, sp.cosh, lambda a: (_c("sinh", a),), "torch.cosh({0})",
       sympy_native=sp.cosh, clip=_clip_in(lambda l: -math.acosh(l), lambda l: math.acosh(l)),
       doc="hyperbolic cosine; clipped: input within ±acosh ℓ"),
    Op("tanh", 1, torch.tanh, sp.tanh, lambda a: (1.0 - _c("tanh", a) ** 2.0,),
       "torch.tanh({0})", sympy_native=sp.tanh, bounded=True, doc="hyperbolic tangent"),
    Op("asinh", 1, torch.asinh, sp.asinh, lambda a: (1.0 / _c("sqrt", a * a + 1.0),),
       "torch.asinh({0})", aliases=("arcsinh",), sympy_native=sp.asinh, doc="inverse sinh"),
    Op("atan", 1, torch.atan, sp.atan, lambda a: (1.0 / (a * a + 1.0),), "torch.atan({0})",
       aliases=("arctan",), sympy_native=sp.atan, bounded=True, doc="inverse tangent"),
    Op("erf", 1, torch.erf, sp.erf, lambda a: ((2.0 / math.sqrt(math.pi)) * _c("exp", -(a * a)),),
       "torch.erf({0})", sympy_native=sp.erf, bounded=True, doc="error function"),
    Op("max", 2, _maximum, lambda a, b: sp.Max(a, b),
       # torch splits the gradient 0.5/0.5 on ties (max(x, abs(x)) ties on all x > 0)
       lambda a, b: (0.5 * (1.0 + _c("sign", a - b)), 0.5 * (1.0 - _c("sign", a - b))),
       "torch.maximum({0}, {1})",
       aliases=("maximum",), sympy_native=sp.Max, doc="max(a, b)"),
    Op("min", 2, _minimum, lambda a, b: sp.Min(a, b),
       lambda a, b: (0.5 * (1.0 - _c("sign", a - b)), 0.5 * (1.0 + _c("sign", a - b))),
       "torch.minimum({0}, {1})",
       aliases=("minimum",), sympy_native=sp.Min, doc="min(a, b)"),
    Op("clamp", 1, _clamp, lambda a, lo, hi: sp.Min(sp.Max(a, lo), hi),
       lambda a, lo, hi: (_c("step", a - lo) * _c("step", hi - a),), "torch.clamp({0}, {1}, {2})",
       scalars=(Scalar("lo", -1.0), Scalar("hi", 1.0)), aliases=("clip",),
       py_tensor_scalars="torch.minimum(torch.maximum({0}, {1}), {2})", display="clamp",
       bounded=True, doc="clamp(x, lo, hi)"),
    # activations --------------------------------------------------------------------------
    Op("sigmoid", 1, torch.sigmoid, _sig,
       lambda a: (_c("sigmoid", a) * _c("sigmoid", -a),), "torch.sigmoid({0})",  # σ(-a), not 1-σ(a)
       aliases=("σ", "logistic", "sigma"), display="sigma", bounded=True, doc="1/(1+e^-x)"),
    Op("softplus", 1, F.softplus, _softplus_sp, lambda a: (_c("sigmoid", a),), "F.softplus({0})",
       aliases=("logexp",), display="softplus", doc="log(1+e^x)"),
    Op("relu", 1, torch.relu, lambda a: sp.Max(0, a), lambda a: (_c("step", a),),
       "torch.relu({0})", display="ReLU", doc="max(0, x)"),
    Op("leaky_relu", 1, _leaky, lambda a, s: _pw(a, s * a, a),
       lambda a, s: (_c("step", a) + s * (1.0 - _c("step", a)),), "F.leaky_relu({0}, {1})",
       scalars=(Scalar("slope", 0.01),), aliases=("lrelu",), display="LeakyReLU",
       py_tensor_scalars="torch.where({0} > 0, {0}, {0} * {1})",
       doc="x for x > 0 else slope·x (slope 0.01)"),
    Op("elu", 1, _elu, lambda a, al: _pw(a, al * (sp.exp(a) - 1), a),
       # exp(min(a, 0)): never 0·inf for large a
       lambda a, al: (_c("step", a) + (1.0 - _c("step", a)) * al * _c("exp", _c("min", a, 0.0)),),
       "F.elu({0}, {1})", scalars=(Scalar("alpha", 1.0),), display="ELU",
       py_tensor_scalars="torch.where({0} > 0, {0}, {1} * torch.expm1({0}))",
       doc="x for x > 0 else alpha·(e^x − 1)"),
    Op("gelu", 1, F.gelu, lambda a: a / 2 * (1 + sp.erf(a / sp.sqrt(2))),
       lambda a: (0.5 * (1.0 + _c("erf", a * (1.0 / SQRT2)))
                  + a * _c("exp", -0.5 * (a * a)) * (1.0 / SQRT2PI),),
       "F.gelu({0})", display="GELU", doc="x·Φ(x), exact erf form"),
    Op("silu", 1, F.silu, lambda a: a * _sig(a),
       lambda a: (_c("sigmoid", a) * (1.0 + a * _c("sigmoid", -a)),), "F.silu({0})",
       aliases=("swish",), display="SiLU", doc="x·σ(x)"),
    Op("mish", 1, F.mish, lambda a: a * sp.tanh(_softplus_sp(a)),
       lambda a: (_c("tanh", _c("softplus", a))
                  + a * _c("sigmoid", a) * (1.0 - _c("tanh", _c("softplus", a)) ** 2.0),),
       "F.mish({0})", display="Mish", doc="x·tanh(softplus(x))"),
    Op("selu", 1, torch.selu, lambda a: SELU_SCALE * _pw(a, SELU_ALPHA * (sp.exp(a) - 1), a),
       lambda a: (SELU_SCALE * (_c("step", a) + (1.0 - _c("step", a)) * SELU_ALPHA
                                * _c("exp", _c("min", a, 0.0))),),
       "torch.selu({0})", display="SELU", doc="scale·elu(x, alpha) with the SELU constants"),
    Op("softsign", 1, F.softsign, lambda a: a / (1 + sp.Abs(a)),
       lambda a: (1.0 / (1.0 + _c("abs", a)) ** 2.0,), "F.softsign({0})", display="softsign",
       bounded=True, doc="x/(1+|x|)"),
    Op("hardsigmoid", 1, F.hardsigmoid, lambda a: sp.Min(sp.Max(a / 6 + sp.Rational(1, 2), 0), 1),
       lambda a: ((1.0 / 6.0) * _c("step", a + 3.0) * _c("step", 3.0 - a),), "F.hardsigmoid({0})",
       display="hardsigmoid", bounded=True, doc="clamp(x/6 + 1/2, 0, 1)"),
    Op("hardswish", 1, F.hardswish,
       lambda a: a * sp.Min(sp.Max(a / 6 + sp.Rational(1, 2), 0), 1),
       lambda a: (_c("step", a + 3.0) * _c("step", 3.0 - a) * (a * (1.0 / 3.0) + 0.5)
                  + _c("step", a - 3.0),),
       "F.hardswish({0})", display="hardswish", doc="x·hardsigmoid(x)"),
    Op("hardtanh", 1, F.hardtanh, lambda a: sp.Min(sp.Max(a, -1), 1),
       lambda a: (_c("step", a + 1.0) * _c("step", 1.0 - a),), "F.hardtanh({0})",
       display="hardtanh", bounded=True, doc="clamp(x, -1, 1)"),
    Op("relu6", 1, F.relu6, lambda a: sp.Min(sp.Max(a, 0), 6),
       lambda a: (_c("step", a) * _c("step", 6.0 - a),), "F.relu6({0})", display="ReLU6",
       bounded=True, doc="clamp(x, 0, 6)"),
    Op("logsigmoid", 1, F.logsigmoid, lambda a: -_softplus_sp(-a),
       lambda a: (_c("sigmoid", -a),), "F.logsigmoid({0})", display="logsigmoid",
       doc="log σ(x)"),
]

# Triton expression templates ({0}, {1}, … are fp32 values: names or numeric literals), read by
# grafs.compiler.triton_backend. Numerically safe forms: expm1/log1p, softplus with torch's
# threshold 20, logsigmoid without overflow; max/min propagate NaN like torch. Ops without a
# template make that backend raise.
_SOFTPLUS_TL = "tl.where({0} > 20.0, {0}, libdevice.log1p(tl.exp({0})))"
_NAN = "propagate_nan=tl.PropagateNan.ALL"   # NaN in, NaN out, as torch.maximum/clamp/relu


def _tl_clamp(lo, hi):
    return f"tl.minimum(tl.maximum({{0}}, {lo}, {_NAN}), {hi}, {_NAN})"


_TRITON: dict[str, str] = {
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

# C templates for the CPU kernels (grafs.compiler.c_emit): every value is a GCC vector of fp32
# lanes; K(c) is a constant vector, sel(mask, a, b) a select, v* the vector math of glibc's
# libmvec (or vector helpers of the kernel prelude). Same numerics as the Triton templates.
_C_CLAMP = "vmin(vmax({0}, {1}), {2})"
_C: dict[str, str] = {
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
_OP_LIST = [Op(**{**vars(op), "triton": _TRITON.get(op.name, op.triton), "c": _C.get(op.name, op.c)})
            for op in _OP_LIST]

OPS: dict[str, Op] = {op.name: op for op in _OP_LIST}


def _key(name: str) -> str:
    return name.lower().replace("_", "")


# lookup by canonical name or alias, case-insensitive, underscores ignored (LeakyReLU == leaky_relu)
_LOOKUP: dict[str, str] = {}
for _op in _OP_LIST:
    for _n in (_op.name, *_op.aliases, *( (_op.display,) if _op.display else ())):
        _LOOKUP[_key(_n)] = _op.name


def register(op: Op) -> Op:
    """Add an op to the registry (used by grafs.activations for its grammar terms)."""
    if op.name in OPS and OPS[op.name] is not op:
        raise GrafsError(f"an op named {op.name!r} is already registered")
    OPS[op.name] = op
    for n in (op.name, *op.aliases, *((op.display,) if op.display else ())):
        _LOOKUP[_key(n)] = op.name
    return op


def lookup(name: str) -> Op | None:
    canon = _LOOKUP.get(_key(name))
    return OPS[canon] if canon else None


def get_op(name: str) -> Op:
    op = lookup(name)
    if op is None:
        raise GrafsError(f"unknown function {name!r}{suggest(name)}")
    return op


def suggest(name: str) -> str:
    """'; did you mean …?' with the closest known names, or ''."""
    names = sorted(_LOOKUP)
    close = difflib.get_close_matches(_key(name), names, n=3, cutoff=0.6)
    if not close:
        return ""
    pretty = [OPS[_LOOKUP[c]].name for c in close]
    pretty = list(dict.fromkeys(pretty))
    return "; did you mean " + " or ".join(repr(p) for p in pretty) + "?"


def function_names() -> list[str]:
    """Canonical names of the functions the grammar accepts (no infix operators)."""
    return sorted(n for n, op in OPS.items() if op.infix is None and n != "neg")


# ---------------------------------------------------------------------------------------
# The GRAFS search space: 23 unary and 9 binary candidate ops (seeds/001 Fig. 1, reference code).
@dataclass(frozen=True)
class GammaInit:
    """Initialisation of a learnable γ: N(mean, std) (std 0 means the constant mean)."""
    mean: float
    std: float = 0.0


@dataclass(frozen=True)
class SearchOp:
    """A candidate op of a cell hole, built from registry ops.

    ``build(args, gammas, ell)`` returns the op's Expr on the hole's input(s); ``ell`` is the
    clipping bound ℓ, or None for the unclipped op (the discretized formula evaluates unclipped).

    ``linear``, for ops that are affine in their inputs, restates ``build`` as
    ``((c_0, c_1, …), c_const)``: op = Σ c_i·input_i + c_const, each coefficient a number or
    ``("g", i)`` (γ_i), ``("sig", i)`` (σ(γ_i)) or ``("1-sig", i)`` (1 − σ(γ_i)). The cell's lean
    path folds such ops into its mixing matrix instead of evaluating them (tests check that
    ``linear`` and ``build`` agree).
    """
    name: str
    kind: str                             # "unary" | "binary"
    build: Callable[[Sequence, Sequence, float | None], object]
    gammas: tuple[GammaInit, ...] = ()
    label: str = ""                       # how the paper writes it
    clip_doc: str = ""
    linear: tuple | None = None


def _u(name, build, label, gammas=(), clip_doc="", linear=None):
    return SearchOp(name, "unary", build, tuple(gammas), label, clip_doc, linear)


def _b(name, build, label, gammas=(), clip_doc="", linear=None):
    return SearchOp(name, "binary", build, tuple(gammas), label, clip_doc, linear)


def _clamped(a, r, ell):
    return a if ell is None else _c("clamp", a, -r(ell), r(ell))


_G = GammaInit(1.0, 0.25)  # γ of x+γ, γ·x and γ: N(1, 0.25) as the reference draws them

SEARCH_OPS: dict[str, SearchOp] = {s.name: s for s in [
    _u("identity", lambda a, g, l: a[0], "x", linear=((1.0,), 0.0)),
    _u("neg", lambda a, g, l: -a[0], "-x", linear=((-1.0,), 0.0)),
    _u("abs", lambda a, g, l: _c("abs", a[0]), "|x|"),
    _u("square", lambda a, g, l: _clamped(a[0], math.sqrt, l) ** 2.0, "x^2",
       clip_doc="input clamped to ±sqrt(ℓ)"),
    _u("cube", lambda a, g, l: _clamped(a[0], lambda e: e ** (1 / 3), l) ** 3.0, "x^3",
       clip_doc="input clamped to ±ℓ^(1/3)"),
    # the reference always clamps sqrt's input at 1e-3 (a domain guard, kept in the formula)
    _u("sqrt", lambda a, g, l: _c("sqrt", _c("max", a[0], 1e-3)), "sqrt(x)",
       clip_doc="input clamped to ≥ 1e-3 (always)"),
    _u("add_gamma", lambda a, g, l: a[0] + g[0], "x + γ", [_G], linear=((1.0,), ("g", 0))),
    _u("mul_gamma", lambda a, g, l: g[0] * a[0], "γ·x", [_G], linear=((("g", 0),), 0.0)),
    _u("gamma", lambda a, g, l: g[0], "γ", [_G], linear=((0.0,), ("g", 0))),
    _u("exp", lambda a, g, l: _c("exp", a[0] if l is None else _c("min", a[0], math.log(l))),
       "exp(x)", clip_doc="input clamped to ≤ ln ℓ"),
    _u("sinh", lambda a, g, l: _c("sinh", _clamped(a[0], math.asinh, l)), "sinh(x)",
       clip_doc="input clamped to ±asinh ℓ"),
    _u("tanh", lambda a, g, l: _c("tanh", a[0]), "tanh(x)"),
    _u("asinh", lambda a, g, l: _c("asinh", a[0]), "asinh(x)"),
    _u("atan", lambda a, g, l: _c("atan", a[0]), "atan(x)"),
    _u("relu", lambda a, g, l: _c("relu", a[0]), "max(0, x)"),
    _u("min0", lambda a, g, l: _c("min", a[0], 0.0), "min(0, x)"),
    _u("sigmoid", lambda a, g, l: _c("sigmoid", a[0]), "σ(x)"),
    _u("softplus", lambda a, g, l: _c("softplus", a[0]), "log(1 + e^x)"),
    _u("erf", lambda a, g, l: _c("erf", a[0]), "erf(x)"),
    _u("silu", lambda a, g, l: _c("silu", a[0]), "SiLU(x)"),
    _u("gelu", lambda a, g, l: _c("gelu", a[0]), "GELU(x)"),
    _u("elu", lambda a, g, l: _c("elu", a[0]), "ELU(x)"),
    _u("leaky_relu", lambda a, g, l: _c("leaky_relu", a[0]), "LeakyReLU(x)"),
    _b("add", lambda a, g, l: a[0] + a[1], "a + b", linear=((1.0, 1.0), 0.0)),
    _b("sub", lambda a, g, l: a[0] - a[1], "a - b", linear=((1.0, -1.0), 0.0)),
    _b("mul", lambda a, g, l: _clamped(a[0], math.sqrt, l) * _clamped(a[1], math.sqrt, l), "a·b",
       clip_doc="each factor clamped to ±sqrt(ℓ)"),
    _b("max", lambda a, g, l: _c("max", a[0], a[1]), "max(a, b)"),
    _b("min", lambda a, g, l: _c("min", a[0], a[1]), "min(a, b)"),
    _b("sigmul", lambda a, g, l: _c("sigmoid", a[0]) * a[1], "σ(a)·b"),
    _b("mix", lambda a, g, l: _c("sigmoid", g[0]) * a[0] + (1.0 - _c("sigmoid", g[0])) * a[1],
       "σ(γ)·a + (1−σ(γ))·b", [GammaInit(0.0)], linear=((("sig", 0), ("1-sig", 0)), 0.0)),
    _b("left", lambda a, g, l: a[0], "a", linear=((1.0, 0.0), 0.0)),
    _b("right", lambda a, g, l: a[1], "b", linear=((0.0, 1.0), 0.0)),
]}

GRAFS_UNARY: tuple[str, ...] = tuple(n for n, s in SEARCH_OPS.items() if s.kind == "unary")
GRAFS_BINARY: tuple[str, ...] = tuple(n for n, s in SEARCH_OPS.items() if s.kind == "binary")
assert len(GRAFS_UNARY) == 23 and len(GRAFS_BINARY) == 9

#: optional unary candidates outside the paper's space: periodic ops, which matter for e.g.
#: implicit neural representations (SIREN). Ask for them with
#: ``SearchSpace.grafs(extra_unary=EXTRA_UNARY)``; GRAFS_UNARY stays the paper's 23.
EXTRA_UNARY: tuple[str, ...] = ("sin", "cos")
SEARCH_OPS.update({s.name: s for s in [
    _u("sin", lambda a, g, l: _c("sin", a[0]), "sin(x)"),      # bounded: never clipped
    _u("cos", lambda a, g, l: _c("cos", a[0]), "cos(x)"),
]})
