"""Property tests over random expression DAGs (depth <= 4) built from the op registry:
printing round trip, sympy round trip, sympy (elementary, mpmath) numerics and the symbolic
derivative, all against the eager backend in float64."""
import functools
import math
import signal

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import grafs
from grafs.compiler.eager import run_expr
from grafs.grammar.expr import call, const, param, var
from grafs.ops import OPS
from grafs.testing.paper_formulas import PAPER_FORMULAS

X = torch.linspace(-3.0, 3.0, 121, dtype=torch.float64)
MAX_SCALE = 1e4           # points where an intermediate exceeds this are not compared
DISCONTINUOUS = {"step", "sign"}
PARAMS = {"a": 0.5, "b": -1.25, "c": 2.0}   # one fixed init per name (the grammar requires it)
NUMBERS = [0.5, 2.0, -1.5, 0.25, 3.0, 1.0, -0.75]
SAFE_DOMAIN = {"log", "sqrt"}               # fed abs(.) + 1
# closed-form ops only: module ops (trainable families, e.g. anact(E)) have learnable state
FUNCTION_OPS = {n: op for n, op in OPS.items() if getattr(op, "module", None) is None}
UNARY = sorted(n for n, op in FUNCTION_OPS.items() if op.arity == 1)
BINARY = sorted(n for n, op in FUNCTION_OPS.items() if op.arity == 2)
# () = the defaults
SCALARS = {"leaky_relu": [(0.2,), ("a",), ()], "elu": [(0.5,), ("a",), ()],
           "clamp": [(-0.5, 2.0), ("b", "c"), ()]}

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                        HealthCheck.filter_too_much])


def _scalar(v):
    return param(v, PARAMS[v]) if isinstance(v, str) else v


def build_unary(name, a, variant, with_params, defaults=True):
    op = OPS[name]
    if name in SAFE_DOMAIN:
        return call(name, call("abs", a) + 1.0)
    if op.scalars:
        options = SCALARS.get(name, [tuple(1.5 * s.default + 0.1 for s in op.scalars)])
        if not with_params:
            options = [o for o in options if not any(isinstance(v, str) for v in o)] or options[:1]
        if not defaults:
            options = [o for o in options if o] or options[:1]
        sc = options[variant % len(options)]
        return call(name, a, *[_scalar(v) for v in sc])
    return call(name, a)


def build_binary(name, a, b, variant):
    if name == "div":
        return a / (call("abs", b) + 1.0)
    if name == "pow":
        if variant % 2 == 0:
            return a ** float(2 + variant % 3 // 2)           # x^2 or x^3 on any sign
        return (call("abs", a) + 0.5) ** [0.5, -1.5, 2.5][variant % 3]
    return call(name, a, b)


@functools.lru_cache(maxsize=None)
def exprs(depth, with_params=True, defaults=True):
    leaves = [st.just(var()), st.just(var()), st.sampled_from(NUMBERS).map(const)]
    if with_params:
        leaves.append(st.sampled_from(sorted(PARAMS)).map(lambda n: param(n, PARAMS[n])))
    leaf = st.one_of(*leaves)
    if depth == 0:
        return leaf
    sub = exprs(depth - 1, with_params, defaults)
    unary = st.builds(lambda n, a, v: build_unary(n, a, v, with_params, defaults),
                      st.sampled_from(UNARY), sub, st.integers(0, 5))
    binary = st.builds(build_binary, st.sampled_from(BINARY), sub, sub, st.integers(0, 5))
    return st.one_of(leaf, unary, binary)


EXPRS = exprs(4)
EXPRS_NO_PARAMS = exprs(4, with_params=False)


def evaluate(e, x):
    """Eager float64 values; a constant sub-expression that overflows is a CompileError by design
    (e.g. cosh(cosh(cosh(3)))): such examples are not comparable."""
    try:
        return run_expr(e, x)
    except grafs.CompileError:
        assume(False)


def node_values(e, x):
    return {id(n): evaluate(n, x) for n in e.nodes() if n.args}


def comparable_points(e, x, gap=1e-8):
    """Mask of grid points where every intermediate is finite and moderate and no
    discontinuous op sits within ``gap`` of its jump; and the per-point magnitude scale."""
    vals = node_values(e, x)
    mask = torch.ones_like(x, dtype=torch.bool)
    scale = torch.ones_like(x)
    for n in e.nodes():
        if not n.args:
            continue
        v = vals[id(n)]
        mask &= torch.isfinite(v) & (v.abs() <= MAX_SCALE)
        scale = torch.maximum(scale, torch.nan_to_num(v.abs(), nan=0.0, posinf=0.0))
        if n.op in DISCONTINUOUS:
            arg = evaluate(n.args[0], x)
            mask &= arg.abs() > gap
    return mask, scale


def assert_values_close(got, want, scale, mask, rtol=1e-12):
    got, want, scale = got[mask], want[mask], scale[mask]
    err = (got - want).abs()
    tol = rtol * torch.maximum(want.abs(), torch.ones_like(want)) + rtol * scale
    bad = ~(err <= tol)
    assert not bad.any(), (got[bad][:5], want[bad][:5])


# ---------------------------------------------------------------------------------------------
@settings(max_examples=150, **SETTINGS)
@given(EXPRS)
def test_print_parse_same_function(e):
    s = str(e)
    e2 = grafs.parse(s)
    # printing reaches a fixed point after one parse (API-built nodes such as neg(-1.5), printed
    # '--1.5', parse to the folded constant 1.5, so str(e2) may differ from s)
    s2 = str(e2)
    assert grafs.parse(s2) is e2
    assert str(grafs.parse(s2)) == s2
    assert e2.params() == e.params()
    want = evaluate(e, X)
    got = evaluate(e2, X)
    mask, scale = comparable_points(e, X)
    # nan-equal where both are nan; elsewhere equal to 1e-12 (relative to the value and to the
    # largest intermediate)
    both_nan = torch.isnan(want) & torch.isnan(got)
    assert_values_close(got, want, scale, mask & ~both_nan)


@settings(max_examples=150, **SETTINGS)
@given(EXPRS)
def test_print_parse_is_the_same_node(e):
    """Canonical text parses back to the identical (hash-consed) DAG. The one exception is an
    API-built neg of a constant: neg(-1.5) prints '--1.5', which the parser folds to 1.5."""
    assume(not any(n.op == "neg" and n.args[0].is_const for n in e.nodes()))
    assert grafs.parse(str(e)) is e


@settings(max_examples=100, **SETTINGS)
@given(EXPRS_NO_PARAMS)
def test_sympy_round_trip_same_function(e):
    s = e.to_sympy()
    e2 = grafs.Expr.from_sympy(s)
    assert isinstance(e2, grafs.Expr)
    mask, scale = comparable_points(e, X)
    mask2, scale2 = comparable_points(e2, X) if e2.depends_on_x() or e2.args else (mask, scale)
    m = mask & mask2
    assume(int(m.sum()) >= 5)
    assert_values_close(evaluate(e2, X), evaluate(e, X), torch.maximum(scale, scale2), m, rtol=1e-11)


class _TooSlow(Exception):
    pass


def _too_slow(signum, frame):
    raise _TooSlow


def mp_values(e, x, seconds: float = 1.0):
    """30-digit mpmath values of ``e``'s elementary sympy form at ``x``; nan where undefined,
    complex, or slower than ``seconds`` per point (mpmath evaluates exp of a huge argument
    exactly: one drawn formula needed ln 2 to millions of digits and hung a CI run)."""
    s = e.to_sympy(elementary=True)
    subs = {sp.Symbol(n, real=True): sp.Float(v) for n, v in e.params().items()}
    s = s.subs(subs)
    sym = sp.Symbol("x", real=True)
    f = sp.lambdify(sym, s, modules="mpmath")
    out = []
    old = signal.signal(signal.SIGALRM, _too_slow)
    try:
        with mpmath.workdps(30):
            for v in x.tolist():
                signal.setitimer(signal.ITIMER_REAL, seconds)
                try:
                    r = f(mpmath.mpf(v))
                    out.append(float(r) if mpmath.isfinite(r) and mpmath.im(r) == 0 else math.nan)
                except (ZeroDivisionError, ValueError, OverflowError, TypeError, _TooSlow):
                    out.append(math.nan)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old)
    return torch.tensor(out, dtype=torch.float64)


def test_mp_reference_gives_up_on_a_point_it_cannot_evaluate_quickly():
    """The mpmath reference is time-bounded per point: exp⁴(3) needs e^(e^(e^3)) exactly."""
    import time
    t0 = time.perf_counter()
    v = mp_values(grafs.parse("exp(exp(exp(exp(x))))"), torch.tensor([0.5, 3.0], dtype=torch.float64),
                  seconds=0.2)
    assert math.isclose(float(v[0]), math.exp(math.exp(math.exp(math.exp(0.5)))), rel_tol=1e-12)
    assert math.isnan(float(v[1])) and time.perf_counter() - t0 < 10


@settings(max_examples=80, **SETTINGS)
@given(EXPRS)
def test_sympy_elementary_numerics_match_torch(e):
    x = X[::3]
    mask, scale = comparable_points(e, x, gap=1e-6)
    want = mp_values(e, x)
    m = mask & torch.isfinite(want)
    assume(int(m.sum()) >= 5)
    assert_values_close(evaluate(e, x), want, scale, m, rtol=1e-11)


# ---------------------------------------------------------------------------------------------
# the symbolic derivative against autograd, away from kinks
def kink_distance(e, x):
    """Per point: the distance of the nearest non-smooth op argument from its kink."""
    d = torch.full_like(x, math.inf)

    def near(v, k):
        return (v - k).abs()
    for n in e.nodes():
        if not n.args or n.op not in OPS:
            continue
        name = n.op
        a = evaluate(n.args[0], x)
        if name in ("relu", "abs", "leaky_relu", "elu", "selu", "step", "sign", "softsign"):
            d = torch.minimum(d, near(a, 0.0))
        elif name in ("hardsigmoid", "hardswish"):
            d = torch.minimum(d, torch.minimum(near(a, 3.0), near(a, -3.0)))
        elif name == "hardtanh":
            d = torch.minimum(d, torch.minimum(near(a, 1.0), near(a, -1.0)))
        elif name == "relu6":
            d = torch.minimum(d, torch.minimum(near(a, 0.0), near(a, 6.0)))
        elif name == "clamp":
            lo, hi = evaluate(n.args[1], x), evaluate(n.args[2], x)
            d = torch.minimum(d, torch.minimum(near(a, lo), near(a, hi)))
        elif name in ("max", "min"):
            d = torch.minimum(d, near(a, evaluate(n.args[1], x)))
    return d


@settings(max_examples=100, **SETTINGS)
@given(EXPRS)
def test_derivative_matches_autograd(e):
    mask, scale = comparable_points(e, X, gap=1e-4)
    mask &= kink_distance(e, X) > 1e-4
    d = e.derivative()
    got = evaluate(d, X)
    xt = X.clone().requires_grad_(True)
    y = evaluate(e, xt)
    if y.requires_grad:
        (want,) = torch.autograd.grad(y.sum(), xt, allow_unused=True)
        want = torch.zeros_like(X) if want is None else want
    else:
        want = torch.zeros_like(X)
    mask &= torch.isfinite(want) & (want.abs() <= MAX_SCALE)
    assume(int(mask.sum()) >= 5)
    dscale = torch.maximum(scale, want.abs())
    # torch's hardsigmoid backward multiplies by a float32 1/6, also in float64
    rtol = 1e-7 if any(n.op in ("hardsigmoid", "hardswish") for n in e.nodes()) else 1e-9
    assert_values_close(got, want, dscale, mask, rtol=rtol)


# ---------------------------------------------------------------------------------------------
# the paper formulas through the same pipelines (deterministic)
@pytest.mark.parametrize("name", list(PAPER_FORMULAS))
def test_paper_formula_pipelines(name):
    text, ref = PAPER_FORMULAS[name]
    e = grafs.parse(text)
    x = 4 * X
    want = ref(x)
    # sympy round trip
    torch.testing.assert_close(run_expr(grafs.Expr.from_sympy(e.to_sympy()), x), want,
                               rtol=1e-12, atol=1e-12)
    # elementary sympy numerics
    torch.testing.assert_close(mp_values(e, x[::4]), want[::4], rtol=1e-12, atol=1e-12)
    # the symbolic derivative vs autograd of the hand-written reference
    xt = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref(xt).sum(), xt)
    torch.testing.assert_close(run_expr(e.derivative(), x), g, rtol=1e-10, atol=1e-10)
    # simplification keeps the function
    torch.testing.assert_close(run_expr(e.simplify(), x), want, rtol=1e-10, atol=1e-10)
    # LaTeX names the activations as the paper does
    tex = e.latex()
    for fn in ("GELU", "SiLU", "ReLU", "LeakyReLU"):
        if fn.lower() in str(e).replace("leaky_relu", "leakyrelu").replace("_", ""):
            assert fn in tex


def test_derivative_examples():
    x = X
    d = grafs.parse("x^3 + 2x").derivative()
    torch.testing.assert_close(run_expr(d, x), 3 * x ** 2 + 2)
    assert run_expr(grafs.parse("5").derivative(), x).abs().max() == 0
    assert grafs.parse("{a=2} x").derivative().params() == {"a": 2.0}


def test_simplify_rewrites():
    assert grafs.parse("relu(relu(x))").simplify() is grafs.parse("relu(x)")
    assert grafs.parse("leaky_relu(leaky_relu(x))").simplify() is grafs.parse("leaky_relu(x, 0.0001)")
    assert grafs.parse("x*x + x*x").simplify() is grafs.parse("2*x^2")
    assert grafs.parse("--x").simplify() is grafs.parse("x")


def test_param_named_x_is_not_the_variable():
    """Regression: '{x=0.5}*x' parsed and to_sympy turned it into x**2."""
    for text in ("{x=0.5}*x", "{x=0.5}"):
        try:
            e = grafs.parse(text)
        except grafs.ParseError as err:
            assert "x" in str(err)
            continue  # rejecting the name is fine
        assert len(e.to_sympy().free_symbols) == (2 if text.endswith("*x") else 1)
        torch.testing.assert_close(run_expr(e, X), 0.5 * X if text.endswith("*x") else 0.5 + 0 * X)


def test_rewrite_maps_each_shared_node_once_and_keeps_sharing():
    from grafs.grammar.expr import rewrite, substitute, with_args
    e = grafs.parse("gelu(x)*gelu(x) + sin(gelu(x))")
    g = grafs.parse("gelu(x)")
    seen = []

    def swap(n, args):
        seen.append(n)
        return call("tanh", *args) if n.op == "gelu" else with_args(n, args)
    out = rewrite(e, swap)
    assert out is grafs.parse("tanh(x)*tanh(x) + sin(tanh(x))")
    assert len(seen) == len(set(map(id, seen))) == len(e.nodes())
    assert rewrite(e, with_args) is e                     # rebuilt unchanged: the same node
    assert substitute(e, {id(g): var()}) is grafs.parse("x*x + sin(x)")
    # keep: such nodes stand for themselves, their arguments are not visited
    kept = rewrite(e, lambda n, args: const(1.0) if n.op == "x" else with_args(n, args),
                   keep=lambda n: n is g)
    assert kept is e
    # a memo shared by two calls maps their common nodes once
    memo, calls = {}, []
    f = grafs.parse("gelu(x) + 1")
    for root in (e, f):
        rewrite(root, lambda n, args: calls.append(n) or with_args(n, args), memo=memo)
    assert len(calls) == len({id(n) for r in (e, f) for n in r.nodes()})
    # any value, not only nodes: the printer maps each node to its text
    assert rewrite(e, lambda n, args: n.op if not args else f"{n.op}({','.join(args)})") \
        == "add(mul(gelu(x),gelu(x)),sin(gelu(x)))"


def test_const_value_is_the_op_in_float64():
    from grafs.grammar.constants import const_value
    assert const_value("elu", [-2.4e-31, 1.0]) == -2.4e-31     # torch's expm1, no cancellation
    assert const_value("leaky_relu", [-2.0, 0.5]) == -1.0      # trailing scalars as numbers
    assert const_value("sigmoid", [0.0]) == 0.5
    assert math.isinf(const_value("exp", [1000.0]))
    assert const_value("exp", [1000.0], finite=True) is None
    assert math.isnan(const_value("log", [-1.0]))
    assert const_value("xielu", [1.0]) is None                 # learnable state: no value
    assert const_value("no_such_op", [1.0]) is None


def test_interning_holds_across_threads():
    """Threads that build the same new nodes at once get one node each (a C cell's source is
    generated in a build thread while the search builds expressions; before the lock, two
    threads could each keep their own copy, and the generated source then differed or failed
    with an unbound leaf)."""
    import sys
    import threading
    from grafs.grammar import expr as E
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)         # switch threads as often as possible
    try:
        for r in range(30):
            got = [None] * 4
            start = threading.Barrier(len(got))

            def build(i, r=r):
                start.wait()
                got[i] = [E.Expr("add", (E.var(), E.const(r * 1000 + k + 0.5))) for k in range(300)]
            threads = [threading.Thread(target=build, args=(i,)) for i in range(len(got))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for k in range(300):
                assert all(g[k] is got[0][k] for g in got), (r, k)
    finally:
        sys.setswitchinterval(old)
