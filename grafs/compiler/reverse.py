"""Symbolic reverse-mode differentiation over the Expr DAG, for any backend that emits code.

:func:`reverse` takes the gradient of an Expr w.r.t. chosen leaves in one sweep in reverse
topological order, from each op's registered partials (``Op.grad``; partials w.r.t. an op's
learnable scalar arguments are derived once per op with sympy). Every node is built through
:func:`S`, which simplifies as it goes: constant folding, hash-consing (so shared
sub-expressions stay one node: CSE for the emitter) and the select rules below. The result is
an Expr over registry ops plus two internal ops (:data:`SELECT`, :data:`EXPM1`) and named
runtime leaves (:func:`leaf`), which a code emitter must give templates.

Numerics of the gradient:

* ``step(z)`` factors become selects ``where(z > 0, P, N)``; products with a select that has a
  zero branch are pushed into the select, so ``0 · inf`` never turns into NaN (the derivative of
  ``elu`` is ``where(x > 0, 1, α·eˣ)``, not ``step(x) + (1 − step(x))·α·eˣ``);
* ``max``/``min``/``clamp`` follow torch's tie rules (a bound given as a number passes the
  gradient on ties like ``torch.clamp``; two tensors split it in half like ``torch.maximum``);
* ``exp(u) − 1`` becomes ``expm1(u)`` and ``1 − σ(u)`` becomes ``σ(−u)``.

Used by the triton backend (grafs.compiler.triton.emit, grafs.compiler.cell.plan).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

from grafs.compiler.lower import Program
from grafs.errors import CompileError, GrafsError
from grafs.grammar import expr as E
from grafs.grammar.constants import const_value
from grafs.grammar.derivative import fold
from grafs.ops import OPS

__all__ = ["SELECT", "EXPM1", "LEAF", "INTERNAL_OPS", "leaf", "is_zero", "sel", "S", "reverse",
           "rewrite_for_grad", "program_expr", "formula_gradients"]

# ---------------------------------------------------------------------------------------------
# internal nodes: selects, expm1 and named runtime leaves (never user-visible, never in OPS)
SELECT = "grafs_select"      # SELECT(z, P, N) = P where z > 0 else N
EXPM1 = "grafs_expm1"
LEAF = "grafs_leaf"       # a runtime value bound to a kernel variable (gy, hole inputs, …)
INTERNAL_OPS = (SELECT, EXPM1)   # backends that emit code give these a template


def leaf(name: str) -> E.Expr:
    return E.Expr(LEAF, name=name)


def is_zero(e: E.Expr) -> bool:
    return e.is_const and e.value == 0.0


def _is_select(e: E.Expr) -> bool:
    return e.op == SELECT


def _zero_branch(e: E.Expr) -> bool:
    return _is_select(e) and (is_zero(e.args[1]) or is_zero(e.args[2]))


def _const_branches(e: E.Expr) -> bool:
    return _is_select(e) and e.args[1].is_const and e.args[2].is_const


def sel(z, p, n) -> E.Expr:
    """``where(z > 0, p, n)`` with the obvious simplifications."""
    z, p, n = (E.as_expr(v) for v in (z, p, n))
    if z.is_const:
        return p if z.value > 0 else n
    if _is_select(p) and p.args[0] is z:
        p = p.args[1]
    if _is_select(n) and n.args[0] is z:
        n = n.args[2]
    if p is n:
        return p
    return E.Expr(SELECT, (z, p, n))


def _eval_const(op: str, vals: list[float]) -> float | None:
    try:
        v = math.expm1(vals[0]) if op == EXPM1 else const_value(op, vals)
    except (OverflowError, ValueError, TypeError, RuntimeError):
        return None
    return v if v is not None and math.isfinite(v) else None


def S(op: str, *args) -> E.Expr:
    """Build ``op(args)`` simplified: :func:`grafs.grammar.derivative.fold` (0/1 factors, constant
    arithmetic), constant evaluation, ``exp(u) - 1 -> expm1(u)`` and the select rules."""
    a = [E.as_expr(v) for v in args]
    if op == SELECT:
        return sel(*a)
    if op == "mul":
        if is_zero(a[0]) or is_zero(a[1]):
            return E.const(0.0)
        for s, o in ((a[0], a[1]), (a[1], a[0])):
            if _zero_branch(s):
                return sel(s.args[0], S("mul", s.args[1], o), S("mul", s.args[2], o))
    elif op == "div" and _zero_branch(a[0]):
        s = a[0]
        return sel(s.args[0], S("div", s.args[1], a[1]), S("div", s.args[2], a[1]))
    elif op == "neg" and _is_select(a[0]):
        s = a[0]
        return sel(s.args[0], S("neg", s.args[1]), S("neg", s.args[2]))
    elif op in ("add", "sub"):
        x, y = a
        if _is_select(x) and _is_select(y) and x.args[0] is y.args[0]:
            return sel(x.args[0], S(op, x.args[1], y.args[1]), S(op, x.args[2], y.args[2]))
        if _const_branches(x) and y.is_const:
            return sel(x.args[0], S(op, x.args[1], y), S(op, x.args[2], y))
        if _const_branches(y) and x.is_const:
            return sel(y.args[0], S(op, x, y.args[1]), S(op, x, y.args[2]))
        if op == "sub" and x.op == "exp" and y.is_const and y.value == 1.0:
            return E.Expr(EXPM1, (x.args[0],))
        if op == "sub" and x.is_const and x.value == 1.0 and y.op == "sigmoid":
            return S("sigmoid", S("neg", y.args[0]))      # 1 - σ(u) = σ(-u), no cancellation
        if op == "add":
            for u, c in ((x, y), (y, x)):
                if u.op == "exp" and c.is_const and c.value == -1.0:
                    return E.Expr(EXPM1, (u.args[0],))
    if op in ("add", "sub", "mul", "div", "neg", "pow"):
        return fold(op, *a)
    if all(v.is_const for v in a) and a:
        v = _eval_const(op, [v.value for v in a])
        if v is not None:
            return E.const(v)
    if op in INTERNAL_OPS:
        return E.Expr(op, a)
    return E.call(op, *a)


def _build(op: str, *args) -> E.Expr:
    """A node of a partial derivative: built through :func:`S`, ``step`` as a select."""
    return sel(args[0], 1.0, 0.0) if op == "step" else S(op, *args)


def _rebuild(e: E.Expr, stop: set[int]) -> E.Expr:
    """Rebuild a registry partial through :func:`_build`, keeping the op's arguments (``stop``)
    as they are so the forward sub-DAG stays shared."""
    return E.rewrite(e, lambda n, args: _build(n.op, *args) if args else n,
                     keep=lambda n: id(n) in stop)


# ---------------------------------------------------------------------------------------------
# partial derivatives
def _max_min_partials(op: str, a: E.Expr, b: E.Expr):
    """Partials of max/min with torch's tie rules (the eager backend runs max(a, number) as
    torch.clamp, which passes the gradient on ties, and max(a, b) as torch.maximum, which halves
    it); the registry's ``step`` forms give 0 on ties, wrong e.g. for max(x, |x|) at x > 0."""
    hi_a = S("sub", a, b) if op == "max" else S("sub", b, a)   # > 0 where a is chosen
    hi_b = S("sub", b, a) if op == "max" else S("sub", a, b)
    if b.is_const:
        return sel(hi_b, 0.0, 1.0), None
    if a.is_const:
        return None, sel(hi_a, 0.0, 1.0)
    return sel(hi_a, 1.0, sel(hi_b, 0.0, 0.5)), sel(hi_b, 1.0, sel(hi_a, 0.0, 0.5))


def _partials(n: E.Expr, need: Sequence[bool]) -> list[E.Expr | None]:
    a = n.args
    if n.op == SELECT:
        return [None, sel(a[0], 1.0, 0.0), sel(a[0], 0.0, 1.0)]
    if n.op == EXPM1:
        return [S("exp", a[0])]
    if n.op in ("max", "min"):
        return list(_max_min_partials(n.op, a[0], a[1]))
    spec = OPS.get(n.op)
    if spec is None or spec.grad is None:
        raise CompileError(f"op {n.op!r} has no symbolic derivative (grafs.ops.Op.grad), which the "
                           f"triton backend needs for its backward kernel; use backend='inductor' "
                           f"or 'eager' for formulas with {n.op!r}")
    out: list[E.Expr | None] = [None] * len(a)
    stop = {id(c) for c in a}
    if any(need[: spec.arity]):
        raw = spec.grad(*a)
        for i in range(spec.arity):
            if need[i]:
                out[i] = _rebuild(E.as_expr(raw[i]), stop)
    for i in range(spec.arity, len(a)):
        if need[i]:
            out[i] = _scalar_partial(spec.name, a, i)
    return out


@functools.lru_cache(maxsize=None)
def _scalar_partial_sympy(op_name: str, i: int):
    import sympy as sp
    spec = OPS[op_name]
    d = tuple(sp.Dummy(f"a{j}", real=True) for j in range(spec.arity + len(spec.scalars)))
    return d, sp.diff(spec.sympy(*d), d[i])


def _scalar_partial(op_name: str, args: Sequence[E.Expr], i: int) -> E.Expr:
    """d op / d (scalar argument i), derived with sympy from the registry's ``Op.sympy`` and
    converted back node by node through :func:`_build` (selects for the cases)."""
    from grafs.grammar.sympy_bridge import from_sympy
    d, s = _scalar_partial_sympy(op_name, i)
    try:
        return from_sympy(s, build=_build, symbols=dict(zip(d, args)), select=sel)
    except GrafsError as err:
        raise CompileError(f"cannot express the derivative of {op_name!r} w.r.t. its learnable "
                           f"scalar argument for the triton backend (sympy gave {s}); keep that "
                           f"argument a number or use backend='inductor'") from err


def rewrite_for_grad(root: E.Expr) -> E.Expr:
    """clamp(a, lo, hi) -> min(max(a, lo), hi): the same values, and the max/min partials then
    give torch's gradient for both number and learnable bounds."""
    return E.rewrite(root, lambda n, args: E.call("min", E.call("max", args[0], args[1]), args[2])
                     if n.op == "clamp" else E.with_args(n, args))


def reverse(root: E.Expr, wrt: Sequence[E.Expr]) -> list[E.Expr]:
    """Symbolic reverse mode: d root / d w for each leaf w in ``wrt`` (seed 1), one sweep over the
    DAG in reverse topological order accumulating adjoints through :func:`S`."""
    nodes = E.topological(root)
    wanted = {id(w) for w in wrt}
    req: dict[int, bool] = {}
    for n in nodes:
        req[id(n)] = id(n) in wanted or any(req[id(c)] for c in n.args)
    adj: dict[int, E.Expr] = {id(root): E.const(1.0)} if req[id(root)] else {}
    for n in reversed(nodes):
        A = adj.get(id(n))
        if A is None or not n.args or is_zero(A):
            continue
        need = [req[id(c)] for c in n.args]
        if not any(need):
            continue
        for c, needed, p in zip(n.args, need, _partials(n, need)):
            if not needed or p is None:
                continue
            contrib = S("mul", A, p)
            if is_zero(contrib):
                continue
            prev = adj.get(id(c))
            adj[id(c)] = contrib if prev is None else S("add", prev, contrib)
    return [adj.get(id(w), E.const(0.0)) for w in wrt]


def program_expr(prog: Program) -> E.Expr:
    """The Expr a (formula) Program computes, rebuilt node by node."""
    init = dict(prog.params)
    vals: list[E.Expr] = []

    def arg(a) -> E.Expr:
        k = a[0]
        if k == "x":
            return E.var()
        if k == "t":
            return vals[a[1]]
        if k == "c":
            return E.const(a[1])
        if k == "p":
            return E.param(a[1], init.get(a[1], 0.0))
        if k == "F":      # a constant where a tensor shaped like x is needed
            return E.Expr(LEAF, value=a[1], name="F")
        if k in ("w", "g"):
            raise CompileError("this program refers to the relaxed cell's weight/gamma vectors; "
                               "a formula program cannot; relaxed cells have their own plans "
                               "(grafs.compiler.cell.plan, grafs.compiler.cell.lean)")
        raise CompileError(f"unknown program argument {a!r}")

    for ins in prog.instrs:
        vals.append(E.Expr(ins.op, [arg(a) for a in ins.args]))
    return arg(prog.result)


def formula_gradients(expr: E.Expr) -> dict[str, E.Expr]:
    """d expr / dx and d expr / d{param} as simplified Exprs (internal select nodes included):
    what the backward kernel evaluates, exposed for inspection and tests."""
    params = [n for n in expr.nodes() if n.op == E.PARAM]
    g = rewrite_for_grad(expr)
    gp = [n for n in g.nodes() if n.op == E.PARAM]
    by_name = {p.name: p for p in gp}
    d = reverse(g, [E.var()] + [by_name.get(p.name, p) for p in params])
    return {"x": d[0], **{p.name: v for p, v in zip(params, d[1:])}}
