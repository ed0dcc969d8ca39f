"""Symbolic d/dx on the DAG (forward mode, each node once) with light algebraic folding."""
from __future__ import annotations

from grafs.grammar import expr as E
from grafs.grammar.constants import const_value
from grafs.ops import OPS


def _is(e: E.Expr, v: float) -> bool:
    return e.is_const and e.value == v


def fold(op: str, *args) -> E.Expr:
    """Build ``op(args)`` folding the trivial cases (0 and 1 factors, constant arithmetic)."""
    a = [E.as_expr(v) for v in args]
    if op == "add":
        if _is(a[0], 0.0):
            return a[1]
        if _is(a[1], 0.0):
            return a[0]
    elif op == "sub":
        if _is(a[1], 0.0):
            return a[0]
        if _is(a[0], 0.0):
            return fold("neg", a[1])
    elif op == "mul":
        if _is(a[0], 0.0) or _is(a[1], 0.0):
            return E.const(0.0)
        if _is(a[0], 1.0):
            return a[1]
        if _is(a[1], 1.0):
            return a[0]
        if _is(a[0], -1.0):
            return fold("neg", a[1])
        if _is(a[1], -1.0):
            return fold("neg", a[0])
    elif op == "div":
        if _is(a[0], 0.0):
            return E.const(0.0)
        if _is(a[1], 1.0):
            return a[0]
    elif op == "neg":
        if a[0].op == "neg":
            return a[0].args[0]
    elif op == "pow":
        if _is(a[1], 1.0):
            return a[0]
        if _is(a[1], 0.0):
            return E.const(1.0)
    if all(x.is_const for x in a) and op in ("add", "sub", "mul", "div", "neg", "pow"):
        import math
        v = [x.value for x in a]
        try:
            r = {"add": lambda: v[0] + v[1], "sub": lambda: v[0] - v[1],
                 "mul": lambda: v[0] * v[1], "div": lambda: v[0] / v[1],
                 "neg": lambda: -v[0], "pow": lambda: v[0] ** v[1]}[op]()
            if isinstance(r, float) and math.isfinite(r):
                return E.const(r)
        except (ZeroDivisionError, OverflowError, ValueError):
            pass
    elif a and all(x.is_const for x in a):   # sigmoid(0) -> 0.5
        v = const_value(op, [x.value for x in a], finite=True)
        if v is not None:
            return E.const(v)
    return E.Expr(op, a)  # args are complete already (refold keeps e.g. expanded family nodes)


def refold(root: E.Expr) -> E.Expr:
    """Rebuild ``root`` bottom-up through :func:`fold`."""
    return E.rewrite(root, lambda n, args: fold(n.op, *args) if args else n)


def derivative(root: E.Expr) -> E.Expr:
    """d root / dx by the chain rule over each op's registered partials."""
    zero, one = E.const(0.0), E.const(1.0)

    def d(n: E.Expr, dargs: list[E.Expr]) -> E.Expr:   # dargs: the arguments' derivatives
        if n.op == E.VAR:
            return one
        if not n.args:
            return zero
        op = OPS[n.op]
        if op.grad is None:
            from grafs.errors import CompileError
            raise CompileError(f"{n.op} has learnable state and no symbolic derivative")
        total = zero
        needed = [i for i, da in enumerate(dargs[: op.arity]) if not _is(da, 0.0)]
        if needed:
            partials = op.grad(*n.args)
            for i in needed:
                total = fold("add", total, fold("mul", refold(E.as_expr(partials[i])), dargs[i]))
        return total
    return E.rewrite(root, d)
