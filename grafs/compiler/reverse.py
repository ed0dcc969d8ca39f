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

import torch

from grafs.compiler.lower import Program
from grafs.errors import CompileError
from grafs.grammar import expr as E
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
        if op == EXPM1:
            v = math.expm1(vals[0])
        else:
            spec = OPS[op]
            t = [torch.tensor(v, dtype=torch.float64) for v in vals[: spec.arity]]
            with torch.no_grad():
                v = float(spec.torch(*t, *vals[spec.arity:]))
    except (OverflowError, ValueError, TypeError, RuntimeError):
        return None
    return v if math.isfinite(v) else None


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


def _topo_stop(root: E.Expr, stop: set[int]) -> list[E.Expr]:
    """Post-order over ``root`` not descending into nodes whose id is in ``stop``."""
    return E.topological(root, stop=lambda n: id(n) in stop)


def _rebuild(e: E.Expr, stop: set[int]) -> E.Expr:
    """Rebuild a registry partial through :func:`S` (``step`` -> select), keeping the op's
    arguments (``stop``) as they are so the forward sub-DAG stays shared."""
    memo: dict[int, E.Expr] = {}
    for n in _topo_stop(e, stop):
        if id(n) in stop or not n.args:
            memo[id(n)] = n
            continue
        args = [memo[id(c)] for c in n.args]
        memo[id(n)] = sel(args[0], 1.0, 0.0) if n.op == "step" else S(n.op, *args)
    return memo[id(e)]


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
    """d op / d (scalar argument i), derived with sympy from the registry's ``Op.sympy``."""
    d, s = _scalar_partial_sympy(op_name, i)
    return _from_sympy(s, {dd: a for dd, a in zip(d, args)}, op_name)


def _from_sympy(s, env: dict, op_name: str) -> E.Expr:
    import sympy as sp
    from grafs.grammar.sympy_bridge import NATIVE

    def fail():
        return CompileError(f"cannot express the derivative of {op_name!r} w.r.t. its learnable "
                            f"scalar argument for the triton backend (sympy gave {s}); keep that "
                            f"argument a number or use backend='inductor'")

    def cond_z(c):  # (z, flip): c  <=>  z > 0 (flip: c <=> not z > 0)
        if isinstance(c, sp.StrictGreaterThan):
            return conv(c.lhs - c.rhs), False
        if isinstance(c, sp.StrictLessThan):
            return conv(c.rhs - c.lhs), False
        if isinstance(c, sp.GreaterThan):
            return conv(c.rhs - c.lhs), True
        if isinstance(c, sp.LessThan):
            return conv(c.lhs - c.rhs), True
        raise fail()

    def conv(t):
        if t in env:
            return env[t]
        if t.is_Number:
            return E.const(float(t))
        if t.is_Add:
            out = None
            for u in t.args:
                v = conv(u)
                out = v if out is None else S("add", out, v)
            return out
        if t.is_Mul:
            out = E.const(1.0)
            for u in t.args:
                if u.is_Pow and u.exp.is_Number and u.exp < 0:
                    out = S("div", out, conv(u.base ** (-u.exp)))
                else:
                    out = S("mul", out, conv(u))
            return out
        if t.is_Pow:
            b, ex = t.args
            if b == sp.E:
                return S("exp", conv(ex))
            if ex == -1:
                return S("div", 1.0, conv(b))
            if ex == sp.Rational(1, 2):
                return S("sqrt", conv(b))
            return S("pow", conv(b), conv(ex))
        if isinstance(t, sp.Piecewise):
            *rest, (last, c_last) = t.args
            if c_last != sp.true:
                raise fail()
            out = conv(last)
            for expr_, c in reversed(rest):
                z, flip = cond_z(c)
                out = sel(z, out, conv(expr_)) if flip else sel(z, conv(expr_), out)
            return out
        if isinstance(t, sp.Heaviside):
            return sel(conv(t.args[0]), 1.0, 0.0)
        if isinstance(t, (sp.Max, sp.Min)):
            name = "max" if isinstance(t, sp.Max) else "min"
            out = conv(t.args[0])
            for u in t.args[1:]:
                out = S(name, out, conv(u))
            return out
        if t.func in NATIVE:
            return S(NATIVE[t.func], *[conv(u) for u in t.args])
        name = getattr(t.func, "grafs_op", None)
        if name is not None:
            return S(name, *[conv(u) for u in t.args])
        raise fail()

    return conv(s)


def rewrite_for_grad(root: E.Expr) -> E.Expr:
    """clamp(a, lo, hi) -> min(max(a, lo), hi): the same values, and the max/min partials then
    give torch's gradient for both number and learnable bounds."""
    memo: dict[int, E.Expr] = {}
    for n in E.topological(root):
        if not n.args:
            memo[id(n)] = n
            continue
        args = [memo[id(c)] for c in n.args]
        if n.op == "clamp":
            memo[id(n)] = E.call("min", E.call("max", args[0], args[1]), args[2])
        else:
            memo[id(n)] = E.Expr(n.op, args, n.value, n.name)
    return memo[id(root)]


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
