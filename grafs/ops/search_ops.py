"""The GRAFS search vocabulary: 23 unary and 9 binary candidate ops (seeds/001 Fig. 1, the
reference code), each built from registry ops, with its learnable γ and their initialisation;
:data:`EXTRA_UNARY` (``sin``, ``cos``) are further candidates used only when a space asks."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from grafs.ops.registry import node as _c

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
