"""Random well-formed expressions from the op registry, and a check per pipeline stage.

The generator reads :data:`grafs.ops.OPS`, so a newly registered op is fuzzed without touching
this file. It draws its choices from a :class:`Chooser`: :class:`RandomChooser` (a seeded
``random.Random``, for the long command-line campaign ``scripts/fuzz.py``) or the hypothesis
adapter :func:`expressions` (for ``tests/test_fuzz.py``, which shrinks failures).

Every ``check_*`` function takes an expression and either returns normally, raises a
:class:`grafs.errors.GrafsError` (the input was rejected with a message: allowed) or raises
:class:`Mismatch` (a stage changed a finite value: a bug). Any other exception is a bug too.

Value comparisons are made only where both sides are finite, away from the jumps of ``step``
and ``sign``, and with a tolerance relative to the largest intermediate value of either
computation at that point (a rounding error of ε·|intermediate| can survive cancellation, so a
tolerance relative to the output alone would flag reorderings such as ``(a + b) - a → b``).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from grafs.errors import GrafsError
from grafs.grammar import expr as E
from grafs.ops import OPS

#: rtol per dtype for values that went through different (equivalent) computations, applied as
#: |got − want| ≤ rtol·(1 + largest intermediate magnitude): float64 has ε = 2.2e-16, and a
#: rounding error ε·|u| of an intermediate u reaches the output amplified by at most |f'(u)·u|,
#: which stays below ~1e8 at the points compared (beyond that an exp overflows: see
#: MAX_MAGNITUDE); float32 has ε = 1.2e-7, and Inductor/Triton may reorder or fuse ops.
RTOL = {torch.float64: 1e-7, torch.float32: 2e-4}
#: points whose largest intermediate exceeds this are not compared (near overflow every
#: computation order overflows at a slightly different place)
MAX_MAGNITUDE = {torch.float64: 1e250, torch.float32: 1e30}
#: ops whose value jumps: points with their argument within tolerance of the jump are skipped
JUMPS = {"step", "sign"}
#: kinks of the piecewise ops (for the derivative: points next to a kink are skipped)
KINKS = {"relu": (0.0,), "abs": (0.0,), "leaky_relu": (0.0,), "elu": (0.0,), "selu": (0.0,),
         "step": (0.0,), "sign": (0.0,), "softsign": (0.0,), "hardsigmoid": (-3.0, 3.0),
         "hardswish": (-3.0, 3.0), "hardtanh": (-1.0, 1.0), "relu6": (0.0, 6.0)}

#: sin and cos of u carry an absolute error ε·|u| (one ulp of u, e.g. from c/x computed as
#: c·(1/x)), which a factor up to the largest intermediate can amplify: compared only while
#: ε·|u| ≤ rtol (seen: cos(2.2e26/x)·2.2e26/x² with two roundings of the same u)
PERIODIC = ("sin", "cos")
PERIODIC_LIMIT = {torch.float64: 1e8, torch.float32: 1e3}
#: ops that are 0 only if these arguments are: a 0 from nonzero ones is an underflow
NEVER_ZERO = {"exp": (), "sigmoid": (), "softplus": (), "mul": (0, 1), "div": (0,), "pow": (0,),
              "gelu": (0,), "silu": (0,), "mish": (0,), "selu": (0,), "elu": (0,),
              "leaky_relu": (0,), "erf": (0,), "sinh": (0,), "tanh": (0,), "atan": (0,),
              "asinh": (0,), "softsign": (0,), "logsigmoid": ()}

X64 = torch.cat([torch.linspace(-6.0, 6.0, 97, dtype=torch.float64),
                 torch.tensor([-1e3, -40.0, -12.0, 12.0, 40.0, 1e3, 1e-6, -1e-6],
                              dtype=torch.float64)])


class Mismatch(AssertionError):
    """A stage changed a finite value or broke a round trip."""


# -- choices ----------------------------------------------------------------------------------
class Chooser:
    """Where the generator's choices come from."""

    def integer(self, lo: int, hi: int) -> int:   # inclusive
        raise NotImplementedError

    def real(self, lo: float, hi: float) -> float:
        raise NotImplementedError

    def choice(self, options: Sequence):
        return options[self.integer(0, len(options) - 1)]

    def chance(self, p: float) -> bool:
        return self.real(0.0, 1.0) < p


class RandomChooser(Chooser):
    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def integer(self, lo, hi):
        return self.rng.randint(lo, hi)

    def real(self, lo, hi):
        return self.rng.uniform(lo, hi)


class DrawChooser(Chooser):
    """Choices drawn through hypothesis's ``draw`` (inside ``st.composite``)."""

    def __init__(self, draw):
        from hypothesis import strategies as st
        self.draw, self.st = draw, st

    def integer(self, lo, hi):
        return self.draw(self.st.integers(lo, hi))

    def real(self, lo, hi):
        return self.draw(self.st.floats(lo, hi, allow_nan=False, allow_infinity=False))


# -- expressions ------------------------------------------------------------------------------
def number(ch: Chooser) -> float:
    """A constant: small integers (0 and 1 matter), 3-decimal values, huge, tiny, π, negatives."""
    kind = ch.integer(0, 9)
    if kind <= 2:
        return float(ch.choice([0, 1, 2, 3, 6, -1, -2, 10, 55]))
    if kind <= 6:
        return round(ch.real(-3.0, 3.0), 3)
    if kind == 7:
        v = float(f"{10 ** ch.real(3.0, 45.0):.4g}")        # large (beyond float32 too)
    elif kind == 8:
        v = float(f"{10 ** -ch.real(3.0, 45.0):.4g}")       # small (below float32 too)
    else:
        v = math.pi
    return -v if ch.chance(0.3) else v


@dataclass(frozen=True)
class GenConfig:
    depth: int = 4
    params: bool = True            # learnable {name=init} leaves
    families: float = 0.03         # chance that a call is a trainable-family (module) op
    share: float = 0.1             # chance to reuse an earlier sub-expression (DAG sharing)


def function_ops(families: bool = False) -> list[str]:
    """Registry ops the generator calls (``neg`` comes from the unary minus): the closed-form
    ones, or the trainable families (module ops)."""
    return sorted(n for n, op in OPS.items() if n != "neg" and (op.module is not None) == families)


def random_expr(ch: Chooser, cfg: GenConfig = GenConfig()) -> E.Expr:
    """A random well-formed expression of depth ≤ cfg.depth + 1 over the registry."""
    inits = {n: number(ch) if ch.chance(0.2) else round(ch.real(-2.0, 2.0), 3) for n in "abc"}
    ops, fams = function_ops(), function_ops(families=True)
    made: list[E.Expr] = []

    def leaf() -> E.Expr:
        k = ch.integer(0, 9)
        if k <= 4:
            return E.var()
        if k <= 7 or not cfg.params:
            return E.const(number(ch))
        name = ch.choice("abc")
        return E.param(name, inits[name])

    def scalar() -> E.Expr:
        if cfg.params and ch.chance(0.3):
            name = ch.choice("abc")
            return E.param(name, inits[name])
        return E.const(number(ch))

    def build(depth: int) -> E.Expr:
        if made and ch.chance(cfg.share):
            return ch.choice(made)
        if depth == 0 or ch.chance(0.25):
            return leaf()
        if ch.chance(0.08):
            a = build(depth - 1)
            out = E.call("neg", a) if not a.is_const else E.const(-a.value)
        else:
            op = OPS[ch.choice(fams if fams and ch.chance(cfg.families) else ops)]
            args = [build(depth - 1) for _ in range(op.arity)]
            args += [scalar() for _ in range(ch.integer(0, len(op.scalars)))]
            out = E.call(op.name, *args)
        made.append(out)
        return out

    return build(cfg.depth)


def expressions(cfg: GenConfig = GenConfig()):
    """The hypothesis strategy of :func:`random_expr`."""
    from hypothesis import strategies as st
    return st.composite(lambda draw: random_expr(DrawChooser(draw), cfg))()


def has_families(e: E.Expr) -> bool:
    return any(n.op in OPS and OPS[n.op].module is not None for n in e.nodes())


# -- reference values ---------------------------------------------------------------------------
@dataclass
class Values:
    """Node-by-node evaluation: the value, the largest finite intermediate magnitude per point,
    the points next to a jump (``step``/``sign`` argument within tolerance of 0) and the
    points where the computed value is unreliable: an intermediate is NaN (the function is
    undefined there even if ``step``/``sign`` turned the NaN into a finite output: ``step(x/x)``
    at 0), overflowed or underflowed (``exp(x)^9e-18`` at x = -1000 is 0^9e-18 = 0 in floats,
    ≈ 1 in fact: an error of 100 %, which an equivalent form need not repeat)."""
    value: torch.Tensor
    scale: torch.Tensor
    shaky: torch.Tensor
    unreliable: torch.Tensor | None = None


def reference(e: E.Expr, x: torch.Tensor, params: dict | None = None,
              judged_in: torch.dtype | None = None) -> Values:
    """Evaluate ``e`` op by op with the registry's torch functions (no lowering, no constant
    folding: independent of the compiler). Constants are 0-d tensors of x's dtype.
    ``judged_in``: the dtype whose limits decide the shaky and unreliable points (default x's:
    a float64 reference for float32 comparisons must flag float32's underflows)."""
    dt = judged_in or x.dtype
    rtol = RTOL[dt]
    vals: dict[int, object] = {}
    scale = torch.ones_like(x)
    shaky = torch.zeros_like(x, dtype=torch.bool)
    unreliable = torch.zeros_like(x, dtype=torch.bool)
    tiny = torch.finfo(dt).tiny
    for n in E.topological(e):
        if n.op == E.VAR:
            v = x
        elif n.op == E.CONST:
            v = torch.tensor(n.value, dtype=torch.float64).to(x.dtype)
        elif n.op == E.PARAM:
            p = (params or {}).get(n.name, n.value)
            v = p if isinstance(p, torch.Tensor) else \
                torch.tensor(p, dtype=torch.float64).to(x.dtype)
        else:
            op = OPS[n.op]
            if op.module is not None:
                raise GrafsError(f"{n.op} has learnable state: no reference value")
            args = [vals[id(a)] for a in n.args]
            tensors = args[: op.arity]
            scalars = [float(s) for s in args[op.arity:]]   # numbers or parameters: 0-d
            with torch.no_grad():
                v = op.torch(*tensors, *scalars)
            if n.op in JUMPS:
                a = torch.broadcast_to(tensors[0], x.shape)
                shaky |= a.abs() <= rtol * scale
            if n.op in PERIODIC:   # sin(u) carries an absolute error ε·|u|
                shaky |= torch.broadcast_to(tensors[0], x.shape).abs() > PERIODIC_LIMIT[dt]
            if n.op in NEVER_ZERO:   # 0 from nonzero arguments: underflow
                lost = torch.broadcast_to(v, x.shape) == 0
                for i in NEVER_ZERO[n.op]:
                    lost &= torch.broadcast_to(tensors[i], x.shape) != 0
                unreliable |= lost
        vv = torch.broadcast_to(v, x.shape).detach()
        scale = torch.maximum(scale, torch.nan_to_num(vv.abs(), nan=0.0, posinf=0.0))
        # NaN, overflowed (sigmoid(exp(x)^1e-17) at x = 1000 is 1, in fact 0.5) or subnormal
        unreliable |= ~torch.isfinite(vv) | ((vv != 0) & (vv.abs() < tiny))
        vals[id(n)] = v
    out = torch.broadcast_to(vals[id(e)], x.shape)
    return Values(out, scale, shaky, unreliable)


def comparable(a: Values, want: Values, dtype) -> torch.Tensor:
    """Points where both values are finite, neither computation is near overflow or a jump,
    and the reference ``want`` is defined."""
    m = (torch.isfinite(a.value) & torch.isfinite(want.value) & ~a.shaky & ~want.shaky
         & (a.scale <= MAX_MAGNITUDE[dtype]) & (want.scale <= MAX_MAGNITUDE[dtype]))
    return m if want.unreliable is None else m & ~want.unreliable


def assert_close(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor,
                 what: str, rtol: float) -> int:
    """|got − want| ≤ rtol·(1 + scale) at the ``mask`` points; returns how many were
    compared."""
    g, w, s = got.detach()[mask].double(), want.detach()[mask].double(), scale[mask].double()
    err = (g - w).abs()
    bad = ~(err <= rtol * (1.0 + s))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise Mismatch(f"{what}: {int(bad.sum())} of {int(mask.sum())} points differ; e.g. "
                       f"got {float(g[i])!r}, want {float(w[i])!r} (scale {float(s[i]):.3g})")
    return int(mask.sum())


# -- the stages -------------------------------------------------------------------------------
def check_print(e: E.Expr) -> None:
    """The canonical text parses back to the identical (hash-consed) node."""
    from grafs.grammar.parser import parse
    s = str(e)
    back = parse(s)
    if back is not e:
        raise Mismatch(f"print/parse round trip: {s!r} parsed back as {str(back)!r}")


def _with_inits(e: E.Expr) -> E.Expr:
    """``e`` with every learnable parameter replaced by its initial value."""
    return E.rewrite(e, lambda n, args: E.const(n.value) if n.op == E.PARAM
                     else E.with_args(n, args))


def _same_function(got: E.Expr, want: E.Expr, what: str, x=X64) -> int:
    a, b = reference(got, x), reference(want, x)
    m = comparable(a, b, x.dtype)
    return assert_close(a.value, b.value, torch.maximum(a.scale, b.scale), m, what, RTOL[x.dtype])


def check_sympy(e: E.Expr) -> int:
    """Expr → sympy → Expr keeps every finite value (parameters at their initial values)."""
    if has_families(e):
        e.to_sympy()        # must work (or raise a GrafsError); no values to compare
        return 0
    plain = _with_inits(e)
    back = E.Expr.from_sympy(plain.to_sympy())
    return _same_function(back, plain, f"sympy round trip of {plain} gave {back}")


def check_simplify(e: E.Expr) -> int:
    """simplify() keeps every finite value and prints text that parses back to itself."""
    from grafs.grammar.parser import parse
    s = e.simplify()
    if parse(str(s)) is not s:
        raise Mismatch(f"simplify({e}) = {s} does not parse back to itself")
    if has_families(e):
        return 0
    return _same_function(_with_inits(s), _with_inits(e), f"simplify({e}) = {s}")


def _kink_distance(e: E.Expr, x: torch.Tensor) -> torch.Tensor:
    """Per point: how close any non-smooth op's argument is to its kink (or max/min to a tie)."""
    d = torch.full_like(x, math.inf)
    for n in e.nodes():
        if not n.args or n.op not in OPS:
            continue
        a = reference(n.args[0], x).value
        ks: list = list(KINKS.get(n.op, ()))
        if n.op in ("max", "min"):
            ks = [reference(n.args[1], x).value]
        elif n.op == "clamp":
            ks = [reference(n.args[1], x).value, reference(n.args[2], x).value]
        for k in ks:
            d = torch.minimum(d, torch.nan_to_num((a - k).abs(), nan=math.inf))
    return d


def check_derivative(e: E.Expr, x: torch.Tensor = X64) -> int:
    """derivative() against float64 autograd of the eager backend, where f, autograd's and the
    symbolic derivative are finite and no op is within 1e-6 of a kink."""
    from grafs.compiler.eager import run_expr
    d = e.derivative()
    xt = x.clone().requires_grad_(True)
    y = run_expr(e, xt)
    if y.requires_grad:
        (auto,) = torch.autograd.grad(y.sum(), xt, allow_unused=True)
    else:
        auto = None
    auto = torch.zeros_like(x) if auto is None else auto
    f, sym = reference(e, x), reference(d, x)
    got = Values(auto, torch.ones_like(x), torch.zeros_like(x, dtype=torch.bool))
    m = comparable(sym, f, x.dtype) & torch.isfinite(auto) & (_kink_distance(e, x) > 1e-6)
    scale = torch.maximum(torch.maximum(f.scale, sym.scale), auto.abs())
    return assert_close(sym.value, got.value, scale, m, f"derivative of {e} = {d}", RTOL[x.dtype])


def check_eager(e: E.Expr, x: torch.Tensor = X64) -> int:
    """The eager backend (lowering, constant folding) against op-by-op reference values, in
    float64; and it runs in float32."""
    from grafs.compiler import compile as gcompile
    act = gcompile(e, backend="eager")
    act(x.float())
    if has_families(e):
        act.double()(x)
        return 0
    got = Values(act.double()(x).detach(), torch.ones_like(x),
                 torch.zeros_like(x, dtype=torch.bool))
    # the module's parameters were created in float32: the reference uses the same values
    want = reference(e, x, {n: p.detach() for n, p in act.params.items()})
    m = comparable(got, want, x.dtype)
    return assert_close(got.value, want.value, want.scale, m, f"eager {e}", RTOL[x.dtype])


def check_backend(e: E.Expr, backend: str, x: torch.Tensor | None = None) -> int:
    """``inductor``, ``triton`` (under TRITON_INTERPRET=1 on a CPU) or ``python`` (the exported
    module) against the eager backend in float32: values, and the gradient w.r.t. x away from
    kinks (each backend has its own backward: Inductor's, Triton's generated kernel)."""
    from grafs.compiler import compile as gcompile
    x = X64.float() if x is None else x
    if backend == "python":
        from grafs.compiler.codegen import load_source
        from grafs.compiler.python_export import to_python
        act = load_source(to_python(e), prefix="grafs_fuzz_export").Activation()
    else:
        act = gcompile(e, backend=backend)
    ref = gcompile(e, backend="eager")
    (got, gg), (want, gw) = _value_and_grad(act, x), _value_and_grad(ref, x)
    if has_families(e):   # no op-by-op reference: values only, relative to themselves
        w = want.double()
        r = Values(w, torch.maximum(torch.ones_like(w), w.abs()), torch.zeros_like(x, dtype=bool))
    else:   # magnitudes, jumps, NaN, under- and overflow, from float64 judged in float32
        r = reference(e, x.double(), judged_in=torch.float32)
    a = Values(got, r.scale, r.shaky)
    b = Values(want, r.scale, r.shaky, r.unreliable)
    m = comparable(a, b, torch.float32)
    n = assert_close(got, want, r.scale, m, f"{backend} backend on {e}", RTOL[torch.float32])
    if has_families(e):
        return n
    # the backward's own intermediates set its scale (gelu(x)/x: two terms of 5e5 cancel to
    # 0.4 at x = 1e-6), from the symbolic derivative
    d = reference(e.derivative(), x.double(), judged_in=torch.float32)
    m &= torch.isfinite(gg) & torch.isfinite(gw) & (_kink_distance(e, x.double()) > 1e-3)
    m &= ~d.shaky & ~d.unreliable & (d.scale <= MAX_MAGNITUDE[torch.float32])
    scale = torch.maximum(torch.maximum(r.scale, d.scale), gw.abs())
    return n + assert_close(gg, gw, scale, m, f"{backend} backend's gradient of {e}",
                            RTOL[torch.float32])


def _value_and_grad(act, x: torch.Tensor):
    xi = x.detach().clone().requires_grad_(True)
    y = act(xi)
    if not y.requires_grad:
        return y.detach(), torch.zeros_like(x)
    (g,) = torch.autograd.grad(y.sum(), xi, allow_unused=True)
    return y.detach(), torch.zeros_like(x) if g is None else g


# -- discretization -------------------------------------------------------------------------------
TEMPLATES = ("B(U(x), U(x))", "U(B(U(x), U(x)))", "B(U(B(U(x), U(x))), U(x))")


def random_cell(ch: Chooser, families: bool = False):
    """A relaxed cell over a small random search space, with random α, γ and dropped ops."""
    from grafs.ops import SEARCH_OPS
    from grafs.runtime.space import SearchSpace
    unary = [n for n, s in SEARCH_OPS.items() if s.kind == "unary"
             and (families or not _is_family(n))]
    binary = [n for n, s in SEARCH_OPS.items() if s.kind == "binary"]
    pick_u = _subset(ch, unary, ch.integer(1, 5))
    pick_b = _subset(ch, binary, ch.integer(1, 3))
    space = SearchSpace(ch.choice(TEMPLATES), unary=pick_u, binary=pick_b)
    cell = space.relax(mode="eager", seed=ch.integer(0, 10 ** 6))
    with torch.no_grad():
        for a in cell.alpha:
            a.copy_(torch.tensor([ch.real(-3.0, 3.0) for _ in range(a.numel())]))
        for j in range(cell.gamma.numel()):
            v = ch.choice([0.0, 1.0, round(ch.real(-4.0, 4.0), 4), number(ch)])
            cell.gamma[j] = max(-3e38, min(3e38, v))       # γ is a float32 parameter
        cell.drop(ch.integer(0, cell.num_active()))
    return cell


def _is_family(search_op: str) -> bool:
    from grafs.ops import SEARCH_OPS
    spec = SEARCH_OPS[search_op]
    ins = [E.var()] * (1 if spec.kind == "unary" else 2)
    return has_families(E.as_expr(spec.build(ins, [E.const(1.0)] * len(spec.gammas), None)))


def _subset(ch: Chooser, items: list, k: int) -> list:
    pool = list(items)
    out = []
    for _ in range(min(k, len(pool))):
        out.append(pool.pop(ch.integer(0, len(pool) - 1)))
    return out


def check_discretize(cell) -> int:
    """The discretized formula parses back to itself and equals, where finite, the cell's
    chosen ops evaluated without folding; its display form parses; ``keep_x`` gives a formula
    with x whenever the highest-α one lacks it and some choice of ops has it."""
    from grafs.grammar.display import display_expr
    from grafs.grammar.parser import parse
    n, shown = 0, set()
    for keep_x in (False, True):
        d = cell.discretize(keep_x=keep_x)
        if parse(str(d)) is not d:
            raise Mismatch(f"discretized formula {d} does not parse back to itself")
        if d not in shown:        # the display form simplifies with sympy: once per formula
            parse(str(display_expr(d)))
            shown.add(d)
        chosen = cell.chosen_ops(keep_x=keep_x)
        raw = _unfolded(cell, chosen)
        if keep_x and not d.depends_on_x() and _some_choice_has_x(cell):
            raise Mismatch(f"discretize(keep_x=True) gave {d} without x for {chosen}")
        if not has_families(raw):
            n += _same_function(d, raw, f"discretized {chosen} = {d}")
    return n


def _unfolded(cell, chosen: list[str]) -> E.Expr:
    from grafs.compiler.cell.lower import substitute_holes
    from grafs.ops import SEARCH_OPS
    scale = getattr(cell, "scale", None)

    def fill(h, ins):
        g = [E.const(v) for v in cell.gamma_values(h.index, chosen[h.index])]
        out = E.as_expr(SEARCH_OPS[chosen[h.index]].build(ins, g, None))
        if scale is not None:
            out = float(scale[cell.slot_of[(h.index, chosen[h.index])]]) * out
        return out
    return substitute_holes(cell.space, fill)


def _some_choice_has_x(cell) -> bool:
    """Brute force over every choice of ops (the random cells are small)."""
    import itertools
    holes = cell.space.holes
    if _prod(len(h.ops) for h in holes) > 4096:
        return False
    return any(_unfolded_folded(cell, list(c)).depends_on_x()
               for c in itertools.product(*[h.ops for h in holes]))


def _unfolded_folded(cell, chosen):
    from grafs.grammar.simplify import apply_rules
    return apply_rules(_unfolded(cell, chosen))


def _prod(it) -> int:
    out = 1
    for v in it:
        out *= v
    return out


# -- a campaign -----------------------------------------------------------------------------------
STAGES: dict[str, Callable] = {
    "print": check_print, "sympy": check_sympy, "simplify": check_simplify,
    "derivative": check_derivative, "eager": check_eager,
}
