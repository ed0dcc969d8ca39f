"""Choosing one op per hole so that the formula still depends on x.

The highest-α op per hole can give a formula without x: a hole that picked ``γ`` (or a binary
``left``/``right`` that kept the constant side, or ``a - b`` of two equal inputs) cuts every
path from the input, and the found "activation" is a constant such as
``sigmoid(asinh(0))*1.0198``. :func:`choices_with_x` finds the choice closest to the
highest-α one that keeps x: fewest holes moved to a dropped op, then fewest holes changed, then
least α given up. A dynamic program over the template (each hole's subtree is a tree: every
hole is its own node) finds the cheapest choice whose ops *structurally* pass x through; if
the formula built from it still lacks x (cancellation: ``relu(x) - relu(x)``), the choices are
tried in order of cost.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

from grafs.grammar import expr as E
from grafs.ops import SEARCH_OPS

# a cost is (holes changed to a dropped op, holes changed, α given up): smaller is better
Cost = tuple[int, int, float]


def _add(*cs: Cost) -> Cost:
    return (sum(c[0] for c in cs), sum(c[1] for c in cs), sum(c[2] for c in cs))


def uses_inputs(op_name: str, n_inputs: int, gammas: Sequence[float]) -> frozenset[int]:
    """Which inputs the op's formula depends on, with these γ (``γ·x`` with γ = 0 uses none)."""
    from grafs.grammar.simplify import apply_rules
    used = set()
    for i in range(n_inputs):
        ins = [E.var() if j == i else E.const(0.5) for j in range(n_inputs)]
        out = SEARCH_OPS[op_name].build(ins, [E.const(g) for g in gammas], None)
        if apply_rules(E.as_expr(out)).depends_on_x():
            used.add(i)
    return frozenset(used)


def choices_with_x(space, chosen: Sequence[str], alpha: Sequence[Sequence[float]],
                   active: Sequence[Sequence[bool]],
                   gamma_values: Callable[[int, str], list[float]],
                   has_x: Callable[[list[str]], bool], limit: int = 5000) -> list[str] | None:
    """Per hole, the op to use so that the formula depends on x, closest to ``chosen`` (see the
    module docstring); ``has_x(choice)`` says whether the formula of a choice depends on x.
    None if no choice of ops keeps x (or none of the ``limit`` cheapest does)."""
    costs = [[_own(h, op, chosen, alpha, active) for op in h.ops] for h in space.holes]
    first = _structural(space, chosen, costs, gamma_values)
    if first is None:
        return None
    if has_x(first):
        return first
    return _best_first(space, costs, has_x, limit)


def _own(h, op: str, chosen, alpha, active) -> Cost:
    """The cost of putting ``op`` into hole ``h`` instead of its highest-α op."""
    k = h.ops.index(op)
    if op == chosen[h.index]:
        return (0, 0, 0.0)
    top = alpha[h.index][h.ops.index(chosen[h.index])]
    return (0 if active[h.index][k] else 1, 1, top - alpha[h.index][k])


def _best_first(space, costs, has_x, limit: int) -> list[str] | None:
    """Choices in order of total cost (a heap over per-hole ranks), the first with x."""
    import heapq
    order = [sorted(range(len(c)), key=lambda k: c[k]) for c in costs]

    def total(ranks):
        return _add(*(costs[i][order[i][r]] for i, r in enumerate(ranks)))
    start = (0,) * len(costs)
    heap, seen = [(total(start), start)], {start}
    for _ in range(limit):
        if not heap:
            break
        _, ranks = heapq.heappop(heap)
        choice = [h.ops[order[i][r]] for i, (h, r) in enumerate(zip(space.holes, ranks))]
        if has_x(choice):
            return choice
        for i in range(len(ranks)):
            nxt = ranks[:i] + (ranks[i] + 1,) + ranks[i + 1:]
            if nxt[i] < len(order[i]) and nxt not in seen:
                seen.add(nxt)
                heapq.heappush(heap, (total(nxt), nxt))
    return None


def _structural(space, chosen, costs, gamma_values) -> list[str] | None:
    """The cheapest choice in which x reaches the output through ops that use their inputs."""
    holes = {id(h.node): h for h in space.holes}
    # best[id(node)][dep] = (cost, record): dep says whether the node's value depends on x
    best: dict[int, dict[bool, tuple[Cost, tuple]]] = {}

    def table_of(n: E.Expr, kids: list[dict]) -> dict[bool, tuple[Cost, tuple]]:
        table: dict[bool, tuple[Cost, tuple]] = {}
        if n.op == E.VAR:
            table[True] = ((0, 0, 0.0), ((), ()))
        elif not n.args:
            table[False] = ((0, 0, 0.0), ((), ()))
        elif id(n) in holes:
            h = holes[id(n)]
            for k, op in enumerate(h.ops):
                own = costs[h.index][k]
                used = uses_inputs(op, len(n.args), gamma_values(h.index, op))
                _combine(table, kids, own, lambda deps: any(deps[i] for i in used), (op,))
        else:
            _combine(table, kids, (0, 0, 0.0), any, ())
        return table
    if True not in E.rewrite(space.root, table_of, memo=best):
        return None
    out = list(chosen)
    stack = [(space.root, True)]
    while stack:   # follow the recorded choices down from the root
        node, dep = stack.pop()
        _, (extra, deps) = best[id(node)][dep]
        if extra:
            out[holes[id(node)].index] = extra[0]
        stack.extend(zip(node.args, deps))
    return out


def _combine(table, kids, own: Cost, out_dep, extra: tuple) -> None:
    """Every combination of the children's dependence states, kept if cheaper for its result."""
    options = [sorted(k.items()) for k in kids]
    for combo in itertools.product(*options):
        deps = tuple(d for d, _ in combo)
        cost = _add(own, *(c for _, (c, _) in combo))
        dep = bool(out_dep(deps))
        if dep not in table or cost < table[dep][0]:
            table[dep] = (cost, (extra, deps))


def varies_with_x(e: E.Expr) -> bool:
    """Whether ``e`` is a function of x that is not constant: x appears in it, and its values
    on a grid over [-20, 20] (float64) are not all equal. The grid catches what structure does
    not, such as ``min(abs(f(x)), -0.05)``, which is -0.05 everywhere. (A formula that is
    constant only away from the grid's points is not told apart.)"""
    if not e.depends_on_x():
        return False
    import torch
    v = _values(e, torch.linspace(-20.0, 20.0, 4001, dtype=torch.float64))
    if v is None:                        # an op the interpreter cannot run: trust the structure
        return True
    v = v[torch.isfinite(v)]
    if v.numel() < 2:
        return False
    return float(v.max() - v.min()) > 1e-9 * max(1.0, float(v.abs().max()))


def _values(e: E.Expr, xs):
    """``e`` at the float64 points ``xs`` (eager interpreter, no grad); None when it cannot be
    run here (an op without an eager form, a trainable family's parameters)."""
    import torch
    from grafs.compiler.eager import run_expr
    from grafs.errors import GrafsError
    try:
        with torch.no_grad():
            return run_expr(e, xs, {}).double().expand_as(xs)
    except (GrafsError, RuntimeError, KeyError, TypeError):
        return None


def is_affine(e: E.Expr) -> bool:
    """Whether ``e`` is a·x + b: its derivative does not depend on x (formulas whose ops have
    no symbolic derivative, trainable families, count as not affine)."""
    from grafs.errors import CompileError
    from grafs.grammar.derivative import derivative
    try:
        return not derivative(e).depends_on_x()
    except CompileError:
        return False


def found_formula(cell) -> E.Expr:
    """The discretized formula a search returns: the highest-α op per hole, unless that does
    not depend on x; then a :class:`~grafs.errors.GrafsWarning` says so and the result is the
    closest formula that does (:func:`choices_with_x`). An affine formula (a·x + b) is returned
    with a warning: it is a valid function but makes the network linear."""
    e = cell.discretize()
    from grafs.errors import warn
    from grafs.grammar.display import display_expr
    if varies_with_x(e):
        if is_affine(e):
            warn(
                f"the found formula {display_expr(e)} is affine in x: the layers around it make "
                f"one linear map; the search ranked a linear op highest, usually a sign that α "
                f"had too few arch steps to learn (see the search's entropy diagnostics)")
        return e
    alt = cell.discretize(keep_x=True)
    if not varies_with_x(alt):
        warn(
            f"the found formula {display_expr(e)} does not depend on x (a constant activation), "
            f"and no choice of the search space's ops does")
        return e
    changed = [f"{h.name}: {a} → {b}" for h, a, b in
               zip(cell.space.holes, cell.chosen_ops(), cell.chosen_ops(keep_x=True)) if a != b]
    warn(
        f"the highest-α formula {display_expr(e)} does not depend on x (a constant activation); "
        f"returning the closest formula that does, {display_expr(alt)} ({', '.join(changed)})")
    return alt


def centred(e: E.Expr) -> E.Expr:
    """``e - e(0)``: the same function up to an additive constant, which the next layer's bias
    absorbs, but zero at 0 like ReLU, GELU or tanh. A found ``0.7016*abs(x) + 0.4989`` trained
    from scratch reaches test MSE 0.42 on the ``abs`` teacher, ``0.7016*abs(x)`` 0.30
    (docs/results-teacher.md): a standard initialisation does not absorb the offset for free.
    ``e`` itself when e(0) is 0, not finite, or cannot be computed here."""
    import math

    import torch
    at0 = _values(e, torch.zeros(1, dtype=torch.float64))
    v = float(at0[0]) if at0 is not None else math.nan
    if not math.isfinite(v) or v == 0.0:
        return e
    return E.call("sub", e, E.const(v))


__all__ = ["centred", "choices_with_x", "found_formula", "is_affine", "uses_inputs", "varies_with_x"]
