"""Symbolic d/dx on the DAG (forward mode, each node once) with light algebraic folding."""
from __future__ import annotations

from grafs.grammar import expr as E
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
        v = eval_const(op, [x.value for x in a])
        if v is not None:
            return E.const(v)
    return E.Expr(op, a)  # args are complete already (refold keeps e.g. expanded family nodes)


def eval_const(op: str, values: list[float]) -> float | None:
    """Registry op ``op`` on constant arguments, in float64; None if it is not a finite number
    (or the op has learnable state)."""
    import math

    import torch
    spec = OPS.get(op)
    if spec is None or spec.module is not None:
        return None
    t = [torch.tensor(v, dtype=torch.float64) for v in values[: spec.arity]]
    with torch.no_grad():
        r = float(spec.torch(*t, *values[spec.arity:]))
    return r if math.isfinite(r) else None


def refold(root: E.Expr) -> E.Expr:
    """Rebuild ``root`` bottom-up through :func:`fold`."""
    memo: dict[int, E.Expr] = {}
    for n in E.topological(root):
        if n.args:
            memo[id(n)] = fold(n.op, *[memo[id(a)] for a in n.args])
        else:
            memo[id(n)] = n
    return memo[id(root)]


def derivative(root: E.Expr) -> E.Expr:
    """d root / dx by the chain rule over each op's registered partials."""
    d: dict[int, E.Expr] = {}
    zero, one = E.const(0.0), E.const(1.0)
    for n in E.topological(root):
        if n.op == E.VAR:
            d[id(n)] = one
            continue
        if not n.args:
            d[id(n)] = zero
            continue
        op = OPS[n.op]
        if op.grad is None:
            from grafs.errors import CompileError
            raise CompileError(f"{n.op} has learnable state and no symbolic derivative")
        total = zero
        needed = [i for i, a in enumerate(n.args[: op.arity]) if not _is(d[id(a)], 0.0)]
        if needed:
            partials = op.grad(*n.args)
            for i in needed:
                total = fold("add", total, fold("mul", refold(E.as_expr(partials[i])), d[id(n.args[i])]))
        d[id(n)] = total
    return d[id(root)]
