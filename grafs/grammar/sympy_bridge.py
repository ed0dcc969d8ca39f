"""Expr <-> sympy.

``to_sympy`` keeps activations symbolic as sympy Functions named like the paper (GELU, SiLU,
LeakyReLU, …) whose derivatives come from the registry's elementary counterparts; with
``elementary=True`` everything is rewritten into elementary functions (erf, exp, Piecewise).
``from_sympy`` maps sympy back onto registry ops.
"""
from __future__ import annotations

import contextlib
import math
import functools
import sys

import sympy as sp
from mpmath import libmp as mlib

from grafs.errors import GrafsError
from grafs.grammar import expr as E
from grafs.grammar.constants import const_value
from grafs.ops import OPS, Op

X = sp.Symbol("x", real=True)


@contextlib.contextmanager
def deep_recursion(limit: int = 20000):
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


@functools.lru_cache(maxsize=None)
def sympy_function(name: str):
    """The symbolic sympy Function class standing for registry op ``name``."""
    op: Op = OPS[name]
    if op.sympy_native is not None:
        return op.sympy_native

    def full_args(args):  # to_sympy leaves defaulted scalars out (LeakyReLU(x)); put them back
        return tuple(args) + tuple(sp.Float(s.default) for s in op.scalars[len(args) - op.arity:])

    def fdiff(self, argindex=1):
        dummies = [sp.Dummy() for _ in self.args]
        d = sp.diff(op.sympy(*full_args(dummies)), dummies[argindex - 1])
        return d.subs(dict(zip(dummies, self.args)))

    def _eval_evalf(self, prec):
        args = full_args(self.args)
        if prec <= 53 and all(a.is_Number for a in args):
            # the registry's own float64 numerics: the elementary form built on Floats cancels
            # (elu(-2.4e-31) = exp(-2.4e-31) - 1 is 0 there, -2.4e-31 with torch's expm1)
            v = const_value(name, [float(a) for a in args], finite=True)
            if v is not None:
                return sp.Float(v, precision=prec)
        try:
            wide = [a.evalf(mlib.prec_to_dps(2 * prec + 64)) for a in args]   # guard digits
            return op.sympy(*wide)._eval_evalf(prec)
        except SYMPY_ERRORS:   # mpmath's exp(1e21): None tells sympy "no numeric value"
            return None

    def _eval_is_real(self):
        return all(a.is_real for a in self.args) or None

    cls = type(op.display or name, (sp.Function,), {
        "nargs": tuple(range(op.arity, op.arity + len(op.scalars) + 1)),
        "fdiff": fdiff, "_eval_evalf": _eval_evalf, "_eval_is_real": _eval_is_real,
        "grafs_op": name,
    })
    return cls


# What sympy raises when it cannot evaluate, compare or rewrite a node: ValueError (Max of a
# non-real value), TypeError, mpmath's OverflowError (sinh(1e28)), a MemoryError when mpmath's
# exp of ~1e17 asks for a mantissa of 2^(10^17) bits (the allocation fails at once), and
# internal errors such as a KeyError from Piecewise's rewriting: any Exception, since every
# caller has a correct answer without sympy (keep the node unevaluated, skip simplification).
SYMPY_ERRORS = (Exception,)


NOT_FINITE_REAL = (sp.I, sp.zoo, sp.nan, sp.oo, -sp.oo)


def to_sympy(root: E.Expr, elementary: bool = False):
    """``root`` as a sympy expression in the symbol x (parameters are real symbols).

    A constant sub-expression whose float64 value is not finite (``cosh(3e41)``, ``log(0)``,
    ``log(-2)``) becomes an opaque symbol named by its text (``from_sympy`` turns it back into
    the sub-expression): sympy would evaluate it in arbitrary precision, which can take hours
    (``gelu(3)^sinh(2.979e41)``), or make it zoo or complex. A node that sympy cannot build, or
    that it would turn into a non-real or infinite value (``x/(x - x)``), is kept unevaluated,
    so the expression still prints and converts back as grafs computes it."""
    memo: dict[int, object] = {}
    value: dict[int, float | None] = {}   # float64 value of constant nodes, None otherwise
    odd: set[int] = set()       # nodes whose value already holds a non-finite part
    params = {}
    with deep_recursion():
        for n in E.topological(root):
            a = [memo[id(c)] for c in n.args]
            value[id(n)] = v64 = _float64(n, [value[id(c)] for c in n.args])
            if n.args and v64 is not None and not math.isfinite(v64):
                memo[id(n)] = opaque(n)
                continue
            inherited = any(id(c) in odd for c in n.args)
            try:
                v = _node(n, a, params, elementary)
                if n.args and not inherited and v.has(*NOT_FINITE_REAL):
                    raise ValueError("keep unevaluated")
            except SYMPY_ERRORS:
                # e.g. max(x, softplus(1/0)): sympy cannot compare softplus(zoo)
                v = _unevaluated(n, a, params, elementary)
            if inherited or v.has(*NOT_FINITE_REAL):
                odd.add(id(n))
            memo[id(n)] = v
    return memo[id(root)]


def _float64(n: E.Expr, args: list) -> float | None:
    """The float64 value of a node without x or parameters (inf and nan included), else None."""
    if n.op == E.CONST:
        return n.value
    if not n.args or any(v is None for v in args):
        return None
    return const_value(n.op, args)


class Opaque(sp.Symbol):
    """A constant grafs sub-expression that sympy must not evaluate (see :func:`to_sympy`)."""


_OPAQUE: dict[str, E.Expr] = {}


def opaque(n: E.Expr) -> Opaque:
    text = str(n)
    _OPAQUE[text] = n
    return Opaque(text)


_INFIX = {"add": lambda a, b: sp.Add(a, b, evaluate=False),
          "sub": lambda a, b: sp.Add(a, sp.Mul(-1, b, evaluate=False), evaluate=False),
          "mul": lambda a, b: sp.Mul(a, b, evaluate=False),
          "div": lambda a, b: sp.Mul(a, sp.Pow(b, -1, evaluate=False), evaluate=False),
          "pow": lambda a, b: sp.Pow(a, b, evaluate=False),
          "neg": lambda a: sp.Mul(-1, a, evaluate=False)}


def _unevaluated(n: E.Expr, a: list, params: dict, elementary: bool):
    """The node built without evaluating it. Only the node itself: under a global
    ``sp.evaluate(False)`` sympy recursed without end on Max(4.4e-34 + log(-1.919), cos(…))."""
    try:
        if n.op in _INFIX:
            return _INFIX[n.op](*a)
        op = OPS[n.op]
        if not elementary and op.module is None:
            keep = len(a)
            while keep > op.arity and n.args[keep - 1].is_const and \
                    n.args[keep - 1].value == op.scalars[keep - 1 - op.arity].default:
                keep -= 1
            return sympy_function(n.op)(*a[:keep], evaluate=False)
        with sp.evaluate(False):
            return _node(n, a, params, elementary)
    except GrafsError:        # a ValueError too: grafs' own message (e.g. no closed form) stands
        raise
    except SYMPY_ERRORS as err:
        raise GrafsError(f"sympy cannot represent {n}: {err}") from None


def _node(n: E.Expr, a: list, params: dict, elementary: bool):
    if n.op == E.VAR:
        return X
    if n.op == E.CONST:   # integers beyond 2^53 stay Floats: exact 10^40s only cost time
        v = n.value
        return sp.Integer(int(v)) if v == int(v) and abs(v) < 2 ** 53 else sp.Float(v)
    if n.op == E.PARAM:
        return params.setdefault(n.name, sp.Symbol(n.name, real=True))
    if n.op == "neg":
        return -a[0]
    if n.op == "pow" and a[0].is_Number and a[1].is_Number:
        # 1896000^-2621000 as an exact Rational has 16 million digits: evaluate in floats
        return sp.Float(a[0]) ** a[1]
    if OPS[n.op].infix or elementary:
        return OPS[n.op].sympy(*a)
    if OPS[n.op].module is not None and len(a) > OPS[n.op].arity:
        from grafs.grammar.printer import grammar_arg
        return sympy_function(n.op)(grammar_arg(n, a))
    op = OPS[n.op]
    # leave defaulted scalars out so LeakyReLU(x) prints as in the paper
    keep = len(a)
    while keep > op.arity and n.args[keep - 1].is_const and \
            n.args[keep - 1].value == op.scalars[keep - 1 - op.arity].default:
        keep -= 1
    return sympy_function(n.op)(*a[:keep])


NATIVE = {sp.exp: "exp", sp.log: "log", sp.Abs: "abs", sp.sign: "sign", sp.sin: "sin",
           sp.cos: "cos", sp.sinh: "sinh", sp.cosh: "cosh", sp.tanh: "tanh", sp.asinh: "asinh",
           sp.atan: "atan", sp.erf: "erf"}


def from_sympy(s, build=None, symbols: dict | None = None, select=None) -> E.Expr:
    """Map a sympy expression in ``x`` (and parameter symbols) back to an Expr: the one
    sympy -> Expr converter.

    ``build(op, *args)`` makes each node (default :func:`grafs.grammar.expr.call`; reverse mode
    passes its simplifying builder), ``symbols`` maps further sympy symbols to Exprs, and with
    ``select(z, p, n)`` (``p`` where ``z > 0``, else ``n``) a Piecewise converts too."""
    s = sp.sympify(s)
    bad = [a for a in NOT_FINITE_REAL if s.has(a)]
    if bad:
        # name the innermost function call holding it (sin(1.14 + I*pi), softplus(zoo))
        part = next((p for p in sp.postorder_traversal(s) if p.has(bad[0]) and p.args
                     and not (p.is_Add or p.is_Mul or p.is_Pow)), s)
        raise GrafsError(f"cannot convert {_text(part)} back to a grafs formula: {bad[0]} is "
                         f"not a finite real number (e.g. a division by zero or the log of a "
                         f"negative number)")
    with deep_recursion():
        return _FromSympy(build or E.call, symbols or {}, select)(s)


def _text(s) -> str:
    """str() of a sympy expression, which fails on unevaluated Min/Max holding nan."""
    try:
        return str(s)
    except SYMPY_ERRORS:
        return sp.srepr(s)


class _FromSympy:
    """The recursive conversion of :func:`from_sympy` with its node builder."""

    def __init__(self, build, symbols: dict, select):
        self.build, self.symbols, self.select = build, symbols, select

    def __call__(self, s) -> E.Expr:
        build = self.build
        if s.is_Symbol:
            if s in self.symbols:
                return self.symbols[s]
            if s.name == "x":
                return E.var()
            if isinstance(s, Opaque):
                return _OPAQUE[s.name]
            raise GrafsError(f"cannot convert free symbol {s} (only x; learnable parameters need "
                             f"their initial values: use Expr.to_sympy on a parsed expression)")
        if s.is_Number or s in (sp.pi, sp.E):
            v = float(s)
            return E.const(v)
        if s.is_Add:
            terms = _sorted_args(s)
            out = self(terms[0])
            for t in terms[1:]:
                c, rest = t.as_coeff_Mul()
                if c.is_Number and c < 0:
                    out = build("sub", out, self(-t))
                else:
                    out = build("add", out, self(t))
            return out
        if s.is_Mul:
            c, rest = s.as_coeff_Mul()
            if c == -1:
                return build("neg", self(rest))
            num, den = [], []
            for f in _sorted_args(s, numbers_first=True):
                if f.is_Pow and f.exp.is_Number and f.exp < 0:
                    den.append(_inverse_power(f.base, f.exp))
                else:
                    num.append(f)
            out = self(num[0]) if num else E.const(1.0)
            for f in num[1:]:
                out = build("mul", out, self(f))
            for f in den:
                out = build("div", out, self(f))
            return out
        if s.is_Pow:
            b, ex = s.args
            if ex == sp.Rational(1, 2):
                return build("sqrt", self(b))
            if b == sp.E:
                return build("exp", self(ex))
            if ex.is_Number and ex < 0:
                return build("div", E.const(1.0), self(_inverse_power(b, ex)))
            return build("pow", self(b), self(ex))
        if isinstance(s, (sp.Max, sp.Min)):
            name = "max" if isinstance(s, sp.Max) else "min"
            args = _sorted_args(s)
            out = self(args[0])
            for a in args[1:]:
                out = build(name, out, self(a)) if not a.is_Number else build(name, self(a), out)
            return out
        if isinstance(s, (sp.re, sp.conjugate)):   # sympy's Abs((-0.9)^f) = 0.9^re(f)·…: a grafs
            return self(s.args[0])                  # value is real or NaN, so re(v) is v
        if isinstance(s, sp.im):
            return E.const(0.0)
        if isinstance(s, sp.Heaviside):
            return build("step", self(s.args[0]))
        if isinstance(s, sp.Piecewise) and self.select is not None:
            *rest, (last, c_last) = s.args
            if c_last != sp.true:
                raise GrafsError(f"cannot map sympy {_text(s)} back to grafs: its last case "
                                 f"has a condition")
            out = self(last)
            for e, c in reversed(rest):
                z, flip = self.condition(c)
                out = self.select(z, out, self(e)) if flip else self.select(z, self(e), out)
            return out
        f = s.func
        if f in NATIVE:
            return build(NATIVE[f], *[self(a) for a in s.args])
        name = getattr(f, "grafs_op", None)
        if name is not None:
            return build(name, *[self(a) for a in s.args])
        raise GrafsError(f"cannot map sympy {f.__name__} back to a grafs op: {_text(s)}")

    def condition(self, c) -> tuple[E.Expr, bool]:
        """(z, flip): the relation ``c`` holds where z > 0 (flip: where not z > 0)."""
        if isinstance(c, sp.StrictGreaterThan):
            return self(c.lhs - c.rhs), False
        if isinstance(c, sp.StrictLessThan):
            return self(c.rhs - c.lhs), False
        if isinstance(c, sp.GreaterThan):
            return self(c.rhs - c.lhs), True
        if isinstance(c, sp.LessThan):
            return self(c.lhs - c.rhs), True
        raise GrafsError(f"cannot map the sympy condition {_text(c)} back to grafs")


def _inverse_power(base, ex):
    """base^(-ex) for a negative number ex, unevaluated: (-2)^0.5 must not become complex."""
    return base if ex == -1 else sp.Pow(base, -ex, evaluate=False)


def _sorted_args(s, numbers_first: bool = False):
    # sympy's order is deterministic; numbers go last in sums and first in products
    args = list(s.args)
    return sorted(args, key=lambda a: (a.is_Number != numbers_first, sp.default_sort_key(a)))
