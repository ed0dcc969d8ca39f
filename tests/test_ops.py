"""The op registry: for every op, torch == sympy (elementary) on a grid, the declared derivative
== torch.autograd == sympy.diff away from kinks, Python-export templates == torch; and the
GRAFS search ops (23 unary + 9 binary) against transcriptions of the reference modules."""
import math

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

import grafs
from grafs.compiler.eager import run_expr
from grafs.grammar.expr import call, const, param, var
from grafs.ops import GRAFS_BINARY, GRAFS_UNARY, OPS, SEARCH_OPS, GammaInit

A = sp.Symbol("a", real=True)
B = sp.Symbol("b", real=True)

# grids / kinks per op; anything not listed uses a symmetric grid with a kink at 0
POSITIVE = {"log", "sqrt"}
KINKS = {
    "relu6": (0.0, 6.0), "hardtanh": (-1.0, 1.0), "hardsigmoid": (-3.0, 3.0),
    "hardswish": (-3.0, 3.0),
}
SMOOTH = {"neg", "exp", "log", "sqrt", "sin", "cos", "sinh", "cosh", "tanh", "asinh", "atan",
          "erf", "sigmoid", "softplus", "gelu", "silu", "mish", "logsigmoid"}
NON_DEFAULT = {"leaky_relu": (0.2,), "elu": (0.5,), "clamp": (-0.5, 2.0)}
NUMPY = ["scipy", "numpy"]
KINK_GAP = 1e-3



def is_function_op(op):
    """Closed-form elementwise ops; module ops (trainable families such as xielu(E), anact(E)) have
    learnable state, no sympy form and no symbolic derivative, and are tested with their modules."""
    return getattr(op, "module", None) is None


FUNCTION_OPS = {n: op for n, op in OPS.items() if is_function_op(op)}
UNARY = sorted(n for n, op in FUNCTION_OPS.items() if op.arity == 1)
BINARY = sorted(n for n, op in FUNCTION_OPS.items() if op.arity == 2)


def scalar_sets(op):
    if not op.scalars:
        return [()]
    default = tuple(s.default for s in op.scalars)
    other = NON_DEFAULT.get(op.name, tuple(1.5 * d + 0.1 for d in default))
    return [default, other]


def kinks(name, scalars):
    if name in SMOOTH:
        return ()
    if name == "clamp":
        return tuple(scalars)
    if name == "relu6":
        return (0.0, 6.0)
    return KINKS.get(name, (0.0,))


def grid(name, scalars, n=801):
    if name in POSITIVE:
        x = np.linspace(0.05, 6.0, n)
    elif name == "relu6":
        x = np.linspace(-4.0, 8.0, n)
    else:
        x = np.linspace(-4.5, 4.5, n)
    for k in kinks(name, scalars):
        x = x[np.abs(x - k) > KINK_GAP]
    return x


def lambdify(expr, syms):
    expr = expr.replace(sp.DiracDelta, lambda *a: sp.S.Zero)
    f = sp.lambdify(syms, expr, modules=NUMPY)

    def run(*vals):
        with np.errstate(all="ignore"):
            out = f(*vals)
        return np.broadcast_to(np.asarray(out, dtype=np.float64), np.broadcast(*vals).shape)
    return run


def t64(v):
    return torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64)


def close(got, want, rtol=1e-12, atol=1e-12):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def autograd_partials(fn, *args):
    ts = [a.clone().requires_grad_(True) for a in args]
    out = fn(*ts)
    if not out.requires_grad:
        return [torch.zeros_like(a) for a in args]
    gs = torch.autograd.grad(out.sum(), ts, allow_unused=True)
    return [torch.zeros_like(a) if g is None else g for g, a in zip(gs, args)]


def test_registry_has_the_documented_ops():
    for name in ["add", "sub", "mul", "div", "pow", "neg", "exp", "log", "sqrt", "abs", "sinh",
                 "tanh", "asinh", "atan", "erf", "max", "min", "sigmoid", "softplus", "relu",
                 "leaky_relu", "elu", "gelu", "silu"]:
        assert name in OPS
    for name, op in OPS.items():
        assert op.name == name and op.arity in (1, 2) and callable(op.torch) and callable(op.sympy)
    for name, op in FUNCTION_OPS.items():
        assert op.grad is not None, name
    assert len(FUNCTION_OPS) >= 38


# ---------------------------------------------------------------------------------------------
# unary ops: torch vs sympy, derivative vs autograd vs sympy.diff
@pytest.mark.parametrize("name", UNARY)
def test_unary_torch_matches_sympy(name):
    op = OPS[name]
    for sc in scalar_sets(op):
        x = grid(name, sc)
        want = lambdify(op.sympy(A, *sc), [A])(x)
        got = op.torch(t64(x), *sc).numpy()
        close(got, want)
        if sc:  # learnable scalars arrive as 0-dim tensors: same values
            got_t = op.torch(t64(x), *[torch.tensor(s, dtype=torch.float64) for s in sc]).numpy()
            close(got_t, want)


@pytest.mark.parametrize("name", UNARY)
def test_unary_declared_derivative(name):
    op = OPS[name]
    for sc in scalar_sets(op):
        x = grid(name, sc)
        xt = t64(x)
        e = call(name, var(), *sc)
        d = e.derivative()
        got = run_expr(d, xt).numpy()
        (auto,) = autograd_partials(lambda t: op.torch(t, *sc), xt)
        # torch's hardsigmoid backward multiplies by a float32 1/6 even in float64
        rtol = 1e-7 if name == "hardsigmoid" else 1e-10
        close(got, auto.numpy(), rtol=rtol, atol=1e-12)
        want = lambdify(sp.diff(op.sympy(A, *sc), A), [A])(x)
        close(got, want, rtol=1e-10, atol=1e-12)


def check_symbolic(e, name, sc, x):
    X = sp.Symbol("x", real=True)
    s = e.to_sympy()
    elem = e.to_sympy(elementary=True)
    for v in x[::8]:
        got = float(s.subs(X, sp.Float(v)).evalf())
        assert got == pytest.approx(float(elem.subs(X, sp.Float(v)).evalf()), rel=1e-12, abs=1e-12)
    ds = lambdify(sp.diff(s, X).doit(), [X])(x)
    close(ds, lambdify(sp.diff(elem, X), [X])(x), rtol=1e-10)
    # from_sympy brings the symbolic form back to the same node
    assert grafs.Expr.from_sympy(s) is e


@pytest.mark.parametrize("name", UNARY)
def test_unary_symbolic_function_and_export(name, tmp_path):
    """to_sympy keeps the op symbolic; evalf and its fdiff agree with the elementary form, and the
    Python-export template computes the same values as the eager backend."""
    op = OPS[name]
    for sc in scalar_sets(op):
        e = call(name, var(), *sc)
        x = grid(name, sc, n=41)
        check_symbolic(e, name, sc, x)
        # the symbolic function with numeric arguments evaluates (sympy evalf's Float args)
        assert float(grafs.Expr.to_sympy(call(name, 0.5, *sc))) == pytest.approx(
            float(op.torch(torch.tensor(0.5, dtype=torch.float64), *sc)), rel=1e-12)
    for sc in scalar_sets(op):
        e = call(name, var(), *sc)
        x = grid(name, sc, n=41)
        src = grafs.to_python(e, class_name="M")
        ns = {}
        exec(compile(src, str(tmp_path / f"{name}.py"), "exec"), ns)  # trusted generated source
        xt = t64(x)
        close(ns["M"]()(xt).numpy(), run_expr(e, xt).numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(n for n in UNARY if OPS[n].scalars))
def test_unary_symbolic_function_default_scalars(name):
    """Regression: to_sympy drops defaulted scalars (LeakyReLU(x)); diff/evalf must restore them."""
    op = OPS[name]
    sc = scalar_sets(op)[0]
    check_symbolic(call(name, var()), name, sc, grid(name, sc, n=41))


# ---------------------------------------------------------------------------------------------
# binary ops
def binary_grid(name):
    a = np.linspace(-3.0, 3.0, 41)
    b = np.linspace(-3.0, 3.0, 41)
    if name == "pow":
        a = np.linspace(0.1, 3.0, 41)
        b = np.linspace(-2.5, 2.5, 41)
    if name == "div":
        b = b[np.abs(b) > 0.1]
    aa, bb = np.meshgrid(a, b, indexing="ij")
    aa, bb = aa.ravel(), bb.ravel()
    if name in ("max", "min"):
        keep = np.abs(aa - bb) > KINK_GAP
        aa, bb = aa[keep], bb[keep]
    return aa, bb


@pytest.mark.parametrize("name", BINARY)
def test_binary_torch_matches_sympy(name):
    op = OPS[name]
    a, b = binary_grid(name)
    want = lambdify(op.sympy(A, B), [A, B])(a, b)
    close(op.torch(t64(a), t64(b)).numpy(), want)
    # one side a Python float (constants are floats in compiled programs)
    for bv in (-1.5, 0.5, 2.0):
        if name == "div" and bv == 0:
            continue
        close(op.torch(t64(a), bv).numpy(), lambdify(op.sympy(A, sp.Float(bv)), [A])(a))


def test_pow_negative_base_integer_exponent():
    x = np.linspace(-3, 3, 61)
    for k in (2.0, 3.0, -1.0, 4.0):
        xx = x[np.abs(x) > 0.05] if k < 0 else x
        want = lambdify(A ** int(k), [A])(xx)
        close(OPS["pow"].torch(t64(xx), k).numpy(), want)
        close(run_expr(grafs.parse(f"x^{k:g}"), t64(xx)).numpy(), want)
        d = run_expr(grafs.parse(f"x^{k:g}").derivative(), t64(xx)).numpy()
        close(d, k * xx ** (k - 1))


BINARY_CONSTS = {"pow": (0.5, 2.0, 3.0, -1.5), "div": (-2.0, 0.5, 3.0)}


@pytest.mark.parametrize("name", BINARY)
def test_binary_declared_derivative(name):
    """Partials of op(x, c) and op(c, x) for several constants c: derivative == autograd == sympy."""
    op = OPS[name]
    for c in BINARY_CONSTS.get(name, (-1.5, 0.0, 0.7, 2.0)):
        for pos in (0, 1):
            x = np.linspace(-4.0, 4.0, 401)
            if name == "pow":
                if pos == 0:
                    x = np.linspace(0.05, 4.0, 401)   # x^c, non-integer c
                elif c <= 0:
                    continue
            if name == "div" and pos == 1:
                x = x[np.abs(x) > 0.05]
            if name in ("max", "min"):
                x = x[np.abs(x - c) > KINK_GAP]
            xt = t64(x)
            args = [var(), const(c)] if pos == 0 else [const(c), var()]
            d = run_expr(call(name, *args).derivative(), xt).numpy()
            full = [xt, torch.full_like(xt, c)] if pos == 0 else [torch.full_like(xt, c), xt]
            auto = autograd_partials(op.torch, *full)[pos]
            close(d, auto.numpy(), rtol=1e-10, atol=1e-12)
            sym = op.sympy(A, sp.Float(c)) if pos == 0 else op.sympy(sp.Float(c), A)
            close(d, lambdify(sp.diff(sym, A), [A])(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", BINARY)
def test_binary_derivative_both_args_depend_on_x(name):
    """op(u(x), v(x)): the chain rule over both partials against autograd."""
    x = np.linspace(0.2, 3.0, 200)
    u, v = "(x + 0.3)", "(0.5*x^2 - 0.4)"
    e = grafs.parse(f"{name}({u}, {v})" if OPS[name].infix is None else
                    f"{u} {OPS[name].infix} {v}")
    xt = t64(x)
    if name in ("max", "min"):
        uu, vv = xt + 0.3, 0.5 * xt ** 2 - 0.4
        keep = (uu - vv).abs() > KINK_GAP
        xt = xt[keep]
    got = run_expr(e.derivative(), xt)
    (auto,) = autograd_partials(lambda t: run_expr(e, t), xt)
    close(got.numpy(), auto.numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the GRAFS search ops
EXPECTED_UNARY = ("identity", "neg", "abs", "square", "cube", "sqrt", "add_gamma", "mul_gamma",
                  "gamma", "exp", "sinh", "tanh", "asinh", "atan", "relu", "min0", "sigmoid",
                  "softplus", "erf", "silu", "gelu", "elu", "leaky_relu")
EXPECTED_BINARY = ("add", "sub", "mul", "max", "min", "sigmul", "mix", "left", "right")


def test_search_ops_23_unary_9_binary():
    assert len(GRAFS_UNARY) == 23 and len(GRAFS_BINARY) == 9
    assert GRAFS_UNARY == EXPECTED_UNARY
    assert GRAFS_BINARY == EXPECTED_BINARY
    assert 4 * len(GRAFS_UNARY) + 2 * len(GRAFS_BINARY) == 110
    for n in ("add_gamma", "mul_gamma", "gamma"):
        (g,) = SEARCH_OPS[n].gammas
        assert (g.mean, g.std) == (1.0, 0.25)
    (g,) = SEARCH_OPS["mix"].gammas
    assert g.mean == 0.0 and g.std == 0.0
    for n, s in SEARCH_OPS.items():
        if n not in ("add_gamma", "mul_gamma", "gamma", "mix"):
            assert s.gammas == (), n


ELL = 10.0
S10 = math.sqrt(ELL)


def ref_unary(name, x, g):
    """Transcriptions of the reference modules (clipping bound 10)."""
    return {
        "identity": lambda: x,
        "neg": lambda: -x,
        "abs": lambda: torch.abs(x),
        "square": lambda: torch.pow(torch.clamp(x, -S10, S10), 2),
        "cube": lambda: torch.pow(torch.clamp(x, -ELL ** (1 / 3), ELL ** (1 / 3)), 3),
        "sqrt": lambda: torch.sqrt(torch.clamp(x, min=1e-3)),
        "add_gamma": lambda: x + g,
        "mul_gamma": lambda: g * x,
        "gamma": lambda: g * torch.ones_like(x),
        "exp": lambda: torch.exp(torch.clamp(x, max=math.log(ELL))),
        "sinh": lambda: torch.sinh(torch.clamp(x, -math.asinh(ELL), math.asinh(ELL))),
        "tanh": lambda: torch.tanh(x),
        "asinh": lambda: torch.asinh(x),
        "atan": lambda: torch.atan(x),
        "relu": lambda: torch.relu(x),
        "min0": lambda: torch.clamp(x, max=0.0),
        "sigmoid": lambda: torch.sigmoid(x),
        "softplus": lambda: torch.log(1 + torch.exp(x)),
        "erf": lambda: torch.erf(x),
        "silu": lambda: x * torch.sigmoid(x),
        "gelu": lambda: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        "elu": lambda: torch.where(x > 0, x, torch.exp(x) - 1),
        "leaky_relu": lambda: torch.where(x > 0, x, 0.01 * x),
    }[name]()


def ref_binary(name, a, b, g):
    return {
        "add": lambda: a + b,
        "sub": lambda: a - b,
        "mul": lambda: torch.clamp(a, -S10, S10) * torch.clamp(b, -S10, S10),
        "max": lambda: torch.maximum(a, b),
        "min": lambda: torch.minimum(a, b),
        "sigmul": lambda: torch.sigmoid(a) * b,
        "mix": lambda: torch.sigmoid(g) * a + (1 - torch.sigmoid(g)) * b,
        "left": lambda: a,
        "right": lambda: b,
    }[name]()


UNCLIPPED = {"square": lambda x: x ** 2, "cube": lambda x: x ** 3, "exp": torch.exp,
             "sinh": torch.sinh}

X20 = torch.linspace(-20.0, 20.0, 4001, dtype=torch.float64)


@pytest.mark.parametrize("name", EXPECTED_UNARY)
@pytest.mark.parametrize("gamma", [0.7, -1.3])
def test_search_unary_op_matches_reference(name, gamma):
    s = SEARCH_OPS[name]
    gexpr = [param("g", gamma)] if s.gammas else []
    gt = torch.tensor(gamma, dtype=torch.float64)
    e = grafs.grammar.expr.as_expr(s.build([var()], gexpr, ELL))
    got = run_expr(e, X20)
    want = ref_unary(name, X20, gt)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the learnable gamma is a real parameter of the built formula
    if s.gammas:
        assert e.params() == {"g": gamma}
        got2 = run_expr(e, X20, {"g": torch.tensor(2.5, dtype=torch.float64)})
        torch.testing.assert_close(got2, ref_unary(name, X20, torch.tensor(2.5, dtype=torch.float64)),
                                   rtol=1e-12, atol=1e-12)
    # float gammas are accepted too (a discretized formula freezes them)
    if s.gammas:
        e_f = grafs.grammar.expr.as_expr(s.build([var()], [gamma], ELL))
        torch.testing.assert_close(run_expr(e_f, X20), want, rtol=1e-12, atol=1e-12)
    # ell=None: the unclipped op (sqrt keeps its domain guard)
    e_u = grafs.grammar.expr.as_expr(s.build([var()], gexpr, None))
    want_u = UNCLIPPED[name](X20) if name in UNCLIPPED else want
    torch.testing.assert_close(run_expr(e_u, X20), want_u, rtol=1e-12, atol=1e-12)


def test_search_unary_clipping_bounds():
    for name in ("square", "cube", "exp", "sinh"):
        e = SEARCH_OPS[name].build([var()], [], ELL)
        v = run_expr(e, X20)
        assert v.abs().max().item() <= ELL * (1 + 1e-12), name
        assert v.abs().max().item() >= ELL * (1 - 1e-12), name


B_OF_X = [lambda x: x, lambda x: -x, lambda x: 20 * torch.sin(1.7 * x + 0.3), lambda x: 0.5 * x - 7]
B_TEXT = ["x", "-x", "20*sin(1.7*x + 0.3)", "0.5*x - 7"]


@pytest.mark.parametrize("name", EXPECTED_BINARY)
def test_search_binary_op_matches_reference(name):
    s = SEARCH_OPS[name]
    for gamma in (0.0, 1.2):
        gexpr = [param("g", gamma)] if s.gammas else []
        gt = torch.tensor(gamma, dtype=torch.float64)
        for bt, bf in zip(B_TEXT, B_OF_X):
            bexpr = grafs.parse(bt)
            e = grafs.grammar.expr.as_expr(s.build([var(), bexpr], gexpr, ELL))
            got = run_expr(e, X20)
            want = ref_binary(name, X20, bf(X20), gt)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            e_u = grafs.grammar.expr.as_expr(s.build([var(), bexpr], gexpr, None))
            want_u = X20 * bf(X20) if name == "mul" else want
            torch.testing.assert_close(run_expr(e_u, X20), want_u, rtol=1e-12, atol=1e-12)


def test_search_mix_init_is_half_half():
    e = SEARCH_OPS["mix"].build([grafs.parse("relu(x)"), grafs.parse("gelu(x)")], [param("g", 0.0)], ELL)
    torch.testing.assert_close(run_expr(e, X20), 0.5 * torch.relu(X20) + 0.5 * F.gelu(X20),
                               rtol=1e-12, atol=1e-12)


def test_gamma_init_dataclass():
    g = GammaInit(1.0, 0.25)
    assert g.mean == 1.0 and g.std == 0.25 and GammaInit(0.0).std == 0.0
