"""Expr.simplify(): rewrite rules sympy can't know, then sympy's algebra.

Rules on the DAG (activation identities):
  leaky_relu(leaky_relu(x, a), b) -> leaky_relu(x, a·b)   for a, b ≥ 0
  relu(relu(x)) -> relu(x);  relu(leaky_relu(x, a)) -> relu(x) for a ≥ 0
  leaky_relu(relu(x), a) -> relu(x);  neg(neg(x)) -> x;  abs(abs(x)) -> abs(x)
  max(e, e) -> e;  min(e, e) -> e;  c1·e + c2·e -> (c1 + c2)·e  (e one shared node)
  op(constants) -> its float64 value when finite  (sigmoid(asinh(0)) -> 0.5)
then sympy canonicalisation (x*x -> x^2, like terms collected, constants folded) and, for
expressions small enough that it is quick, sympy.simplify.
"""
from __future__ import annotations

import sympy as sp

from grafs.grammar import expr as E
from grafs.grammar.derivative import fold
from grafs.grammar.sympy_bridge import SYMPY_ERRORS

_SYMPY_SIMPLIFY_MAX_OPS = 40


def _nonneg_const(e: E.Expr) -> bool:
    return e.is_const and e.value >= 0


def _coeff(e: E.Expr) -> tuple[float, E.Expr]:
    """e as (c, rest) with e == c·rest."""
    if e.op == "mul" and e.args[0].is_const:
        return e.args[0].value, e.args[1]
    if e.op == "neg":
        c, r = _coeff(e.args[0])
        return -c, r
    return 1.0, e


def apply_rules(root: E.Expr) -> E.Expr:
    """``root`` rewritten bottom-up by the DAG rules of the module docstring."""
    return E.rewrite(root, _rules)


def _rules(n: E.Expr, args: list[E.Expr]) -> E.Expr:
    new = E.with_args(n, args)
    if new.op in ("add", "sub", "mul", "div", "neg", "pow") or \
            (new.args and all(a.is_const for a in new.args)):
        new = fold(new.op, *new.args)   # also constant calls: sigmoid(asinh(0)) -> 0.5
    inner = new.args[0] if new.args else None
    if new.op == "leaky_relu" and inner is not None:
        s = new.args[1]
        if inner.op == "leaky_relu" and _nonneg_const(s) and _nonneg_const(inner.args[1]):
            new = E.call("leaky_relu", inner.args[0], inner.args[1].value * s.value)
        elif inner.op == "relu" and _nonneg_const(s):
            new = inner
    elif new.op == "relu" and inner is not None:
        if inner.op == "relu":
            new = inner
        elif inner.op == "leaky_relu" and _nonneg_const(inner.args[1]):
            new = E.call("relu", inner.args[0])
    elif new.op == "abs" and inner is not None and inner.op == "abs":
        new = inner
    elif new.op in ("max", "min") and new.args[0] is new.args[1]:
        new = new.args[0]
    elif new.op in ("add", "sub"):
        (c1, e1), (c2, e2) = _coeff(new.args[0]), _coeff(new.args[1])
        if e1 is e2 and not e1.is_const:
            c = c1 + c2 if new.op == "add" else c1 - c2
            new = fold("mul", c, e1)
    return new


def simplify(root: E.Expr) -> E.Expr:
    """An equivalent expression, usually shorter: the DAG rules, then sympy. Never raises for
    a valid expression: when sympy fails or gives something grafs cannot hold (``zoo`` from a
    division by zero, a complex number from the log of a negative constant), the rules' result
    is returned."""
    from grafs.errors import GrafsError

    e = apply_rules(root)
    if e.params():  # learnable parameters have no sympy round trip of their init; stop here
        return e
    if _unfoldable(e):
        # a constant part that is not a finite float64 (cosh(-2.7e13)): sympy would try to
        # evaluate it in arbitrary precision (seen: minutes and 16 GB), and the formula is
        # not finite there anyway
        return e
    try:
        out = _sympy_simplify(e)
    except (GrafsError, *SYMPY_ERRORS):   # sympy failed: the rules' result is still right
        return e
    # keep whichever prints shorter: sympy sometimes expands
    return out if len(str(out)) <= len(str(e)) else e


def _float_coefficients(s):
    """Integers other than 0, ±1 and exponents as Floats: sympy.simplify expands sin(n·x) for an
    integer n by multiple-angle formulas (-hardtanh(sin(64·x)) took minutes, sin(8·x) 3.5 s;
    with 64.0 it takes 1 s)."""
    if s.is_Integer:
        return sp.Float(s) if abs(s) > 1 else s
    if not s.args or s.is_Relational:
        return s
    if s.is_Pow and s.exp.is_Integer:
        return s.func(_float_coefficients(s.base), s.exp)
    return s.func(*[_float_coefficients(a) for a in s.args])


def _unfoldable(e: E.Expr) -> bool:
    """A call on constants is left after apply_rules() only if its value is not a finite float."""
    from grafs.ops import OPS
    return any(n.args and all(a.is_const for a in n.args) and OPS[n.op].module is None
               for n in e.nodes() if n.op in OPS)


def _sympy_simplify(e: E.Expr) -> E.Expr:
    from grafs.grammar.sympy_bridge import deep_recursion, from_sympy, to_sympy

    with deep_recursion():
        s = to_sympy(e)
        if sum(1 for _ in sp.preorder_traversal(s)) <= _SYMPY_SIMPLIFY_MAX_OPS:
            s2 = sp.simplify(_float_coefficients(s))
            if sp.count_ops(s2) <= sp.count_ops(s):
                s = s2
        return apply_rules(from_sympy(s))
