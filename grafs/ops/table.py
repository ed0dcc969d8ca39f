"""The base ops: arithmetic, elementary functions and the usual activations, each declared
once (the fields are documented on :class:`grafs.ops.registry.Op`) and registered on import."""
from __future__ import annotations

import math

import sympy as sp
import torch
import torch.nn.functional as F

from grafs.ops.registry import OPS, Op, Scalar, node, register


SQRT2 = math.sqrt(2.0)
SQRT2PI = math.sqrt(2.0 * math.pi)
# SELU constants (Klambauer et al. 2017), as torch uses them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# ---------------------------------------------------------------------------------------
# helpers used in the tables below
_c = node    # an expression over registry ops (derivatives, clips)


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
    # expm1 of min(a, 0): the branch not taken never overflows (0·inf in its gradient)
    return F.elu(a, alpha) if _is_num(alpha) else \
        torch.where(a > 0, a, alpha * torch.expm1(torch.clamp(a, max=0)))


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
       # ∂/∂b at a = 0 is 0 (as torch's), not 0·log(0) = NaN: log(a + [a = 0])
       lambda a, b: (b * _c("pow", a, b - 1.0),
                     _c("pow", a, b) * _c("log", a + (1.0 - _c("step", _c("abs", a))))),
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
       py_tensor_scalars="torch.where({0} > 0, {0}, {1} * torch.expm1(torch.clamp({0}, max=0)))",
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
                  + (1.0 - _c("step", 3.0 - a)),),      # (1 at x = 3, as torch)
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

for _op in _OP_LIST:
    register(_op)
