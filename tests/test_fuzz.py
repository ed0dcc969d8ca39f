"""Fuzzing every stage with random expressions from the op registry (grafs.testing.fuzz), a
small budget (about 30 s on a 2-core CPU); ``scripts/fuzz.py --n 100000`` is the long campaign.

The rule checked: any input either works or raises a grafs error (GrafsError) saying what was
wrong; sympy, torch or lark exceptions never escape; no stage changes a finite value (the
tolerances are explained in grafs/testing/fuzz.py). Then regression tests for what the
campaign found (issue 15), and the evaluation-side fixes that came with it: sqrt's floor,
baseline names, display forms of found formulas, formulas that lost x.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grafs
from grafs.compiler.eager import run_expr
from grafs.errors import CompileError, GrafsError, GrafsWarning
from grafs.grammar import sympy_bridge
from grafs.testing import fuzz as F

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                        HealthCheck.filter_too_much,
                                                        HealthCheck.data_too_large])
EXPRS = F.expressions()


@pytest.fixture(autouse=True, scope="module")
def _own_cache(tmp_path_factory):
    """Generated modules (python export, inductor, triton sources) into a throwaway cache."""
    before = os.environ.get("GRAFS_CACHE_DIR")
    os.environ["GRAFS_CACHE_DIR"] = str(tmp_path_factory.mktemp("fuzz_cache"))
    yield
    if before is None:
        os.environ.pop("GRAFS_CACHE_DIR", None)
    else:
        os.environ["GRAFS_CACHE_DIR"] = before


def allow_grafs_errors(check, *args):
    """Run a stage; a GrafsError is an allowed outcome (anything else propagates)."""
    try:
        return check(*args)
    except GrafsError as err:
        assert str(err)            # it says something
        return None


# -- the stages ------------------------------------------------------------------------------
@settings(max_examples=150, **SETTINGS)
@given(EXPRS)
def test_fuzz_print_parse(e):
    F.check_print(e)                    # raises Mismatch unless the text parses back to e
    assert grafs.parse(str(e)) is e


@settings(max_examples=80, **SETTINGS)
@given(EXPRS)
def test_fuzz_sympy_round_trip(e):
    allow_grafs_errors(F.check_sympy, e)


@settings(max_examples=60, **SETTINGS)
@given(EXPRS)
def test_fuzz_simplify_keeps_finite_values(e):
    allow_grafs_errors(F.check_simplify, e)


@settings(max_examples=80, **SETTINGS)
@given(EXPRS)
def test_fuzz_derivative_matches_autograd(e):
    allow_grafs_errors(F.check_derivative, e)


@settings(max_examples=80, **SETTINGS)
@given(EXPRS)
def test_fuzz_eager_matches_reference(e):
    allow_grafs_errors(F.check_eager, e)


@settings(max_examples=40, **SETTINGS)
@given(EXPRS)
def test_fuzz_python_export_matches_eager(e):
    allow_grafs_errors(F.check_backend, e, "python")


@settings(max_examples=8, **SETTINGS)
@given(st.integers(0, 2 ** 32 - 1))
def test_fuzz_discretize_random_cells(seed):
    # raises Mismatch when the discretized formula does not parse back to itself, differs from
    # the cell's chosen ops where finite, or lacks x although a choice with x exists
    cell = F.random_cell(F.RandomChooser(seed))
    F.check_discretize(cell)
    # the highest-α op of each hole is one of its active ops, and keep_x only moves a hole
    # when the highest-α formula does not vary with x
    for chosen in (cell.chosen_ops(), cell.chosen_ops(keep_x=True)):
        assert len(chosen) == len(cell.space.holes)
        assert all(o in h.ops for o, h in zip(chosen, cell.space.holes))
    assert all(o in ops for o, ops in zip(cell.chosen_ops(), cell.active_ops()))
    from grafs.runtime.discretize import varies_with_x
    if varies_with_x(cell.discretize()):
        assert cell.chosen_ops(keep_x=True) == cell.chosen_ops()


def _interesting(seed0: int, k: int):
    """k deterministic random expressions that compile, use x, have no trainable family, and
    are finite at most points (the compiled backends are too slow for hypothesis's budget)."""
    out, seed = [], seed0
    while len(out) < k:
        e = F.random_expr(F.RandomChooser(seed), F.GenConfig(families=0.0))
        seed += 1
        if e.depth < 3 or not e.depends_on_x():
            continue
        try:
            y = grafs.compile(e, backend="eager")(F.X64.float())
        except GrafsError:
            continue
        if bool(torch.isfinite(y).float().mean() > 0.5):
            out.append(e)
    return out


def test_fuzz_inductor_matches_eager():
    """One random expression, one compile (Inductor compiles take seconds)."""
    (e,) = _interesting(1000, 1)
    assert F.check_backend(e, "inductor") > 0


@pytest.mark.gpu
def test_fuzz_triton_matches_eager(monkeypatch):
    pytest.importorskip("triton", reason="the triton extra (grafs[triton])")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")   # the backend reads it at call time
    x = F.X64.float().to("cuda" if torch.cuda.is_available() else "cpu")
    compared = [allow_grafs_errors(F.check_backend, e, "triton", x) for e in _interesting(2000, 12)]
    assert sum(c or 0 for c in compared) > 0


def test_the_harness_sees_a_changed_value():
    """The comparisons are not vacuous: a 1e-6 change is a mismatch, a reordering is not."""
    with pytest.raises(F.Mismatch):
        F._same_function(grafs.parse("x + 1e-6"), grafs.parse("x"), "shifted")
    assert F._same_function(grafs.parse("(exp(x) + x) - exp(x)"), grafs.parse("x"), "ok") > 50


def test_fuzz_script_runs(tmp_path, capsys):
    """The documented long-run command, on a tiny budget."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("fuzz_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    report = tmp_path / "fuzz.json"
    assert mod.main(["--n", "12", "--seed", "3", "--quiet", "--max-gb", "0",
                     "--json", str(report)]) == 0
    import json
    data = json.loads(report.read_text())
    assert data["stages"]["print"]["tried"] == 12 and data["failures"] == []
    assert "expressions/s" in capsys.readouterr().out


# -- regressions: the cases issue 15 lists -------------------------------------------------------
X = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)


def test_huge_constant_is_a_compile_error_not_a_torch_error():
    with pytest.raises(CompileError, match=r"6\^55 = 6.285e\+42 is beyond float32"):
        grafs.compile("6**55", backend="eager")
    with pytest.raises(CompileError, match="beyond float32"):
        grafs.compile("clamp(x, 1e39, 2e39)", backend="eager")
    with pytest.raises(CompileError, match="initial value"):
        grafs.compile("{a=1e39}*x", backend="eager")
    # in range is fine, and grafs' own float64 evaluation is unaffected by parsing
    y = grafs.compile("1e38*x", backend="eager")(torch.ones(2))
    assert torch.equal(y, torch.full((2,), 1e38))


@pytest.mark.parametrize("text", [
    "max(relu(x*max(x, -1.845)), softplus(sin(2.152)/(x - x)))",
    "max(min(x, abs(min(1.807, x))), mish(2.711 + 0.544)/hardswish(x - x))",
    "min(sign(sin(log(-3.141592653589793))), -1.176)",
])
def test_incomparable_sympy_arguments(text):
    """sympy's ValueError ('softplus(zoo)' is not comparable) escaped from simplify()."""
    e = grafs.parse(text)
    assert e.to_sympy() is not None and e.latex()
    s = e.simplify()
    assert grafs.parse(str(s)) is s
    F.check_simplify(e)


def test_simplify_of_a_division_by_zero():
    """'cannot map sympy ComplexInfinity back' was raised although the user only simplified."""
    e = grafs.parse("x + 0.557/((x - x)/sinh(2.859))")
    assert str(e.simplify()) == "x + 0.557/0"
    # to_sympy keeps the division unevaluated (not zoo), so the round trip works
    assert str(grafs.Expr.from_sympy(e.to_sympy())) == "0.557/0 + x"
    # sympy's own zoo has no grafs form: an error naming the part
    import sympy as sp
    with pytest.raises(GrafsError, match=r"cannot convert softplus\(zoo\) back.*division by zero"):
        grafs.Expr.from_sympy(sp.Max(sp.Symbol("x"), grafs.parse("softplus(x)").to_sympy()
                                     .subs(sp.Symbol("x", real=True), sp.zoo), evaluate=False))


def test_sympy_nan_parts_stay_unevaluated():
    """log(0) is zoo in sympy and tanh(zoo) nan, which made printing the Min raise TypeError
    ('Invalid NaN comparison'); in floats tanh(log(0)) is -1."""
    e = grafs.parse("min(tanh(log(0)) + erf(hardswish(x)), leaky_relu(0.802))")
    assert "log(0)" in str(e.to_sympy())
    back = grafs.Expr.from_sympy(e.to_sympy())
    torch.testing.assert_close(F.reference(back, X).value, F.reference(e, X).value)


@pytest.mark.parametrize("text, points", [
    ("-hardtanh(sin(x*-8.963e+35))", 1),                           # sin(n·x), integer n
    ("-hardtanh(sin(64*x))", 100),
    ("relu(silu(1896000^-2621000) + elu(sinh(x), {b=1.968}))", 0),  # an exact 16M-digit power
])
def test_sympy_traps_are_avoided(text, points):
    """Each took sympy over 2 minutes (the campaign's stage timeout): integer coefficients
    reach sympy.simplify as Floats, a power of two numbers is evaluated in floats. The checks
    raise on a changed value; ``points``: how many at least they compare (huge arguments of
    sin and an underflowing constant leave few or none the harness trusts)."""
    e = grafs.parse(text)
    assert F.check_sympy(e) >= points
    assert F.check_simplify(e) >= points


def test_incomparable_max_is_built_unevaluated_without_recursion():
    """Under a global sympy.evaluate(False), Max(4.4e-34 + log(-1.919), cos(GELU(x))) recursed
    until RecursionError; only the node itself is built unevaluated now."""
    e = grafs.parse("min(leaky_relu(-2.531/13230000000, 2.095), -relu6(-2.531/13230000000)) "
                    "- max(log({a=-1.919}) + selu(4.148e-34), cos(gelu(x)))")
    F.check_sympy(e)
    assert "log(-1.919)" in str(F._with_inits(e).to_sympy())


@pytest.mark.parametrize("text, points", [("cosh(-8.037e+40)", 0),
                                          ("x/mish(exp(cosh(4.537e+33)))", 0),
                                          ("relu(-1.987^silu(-2.825))*x", 100),
                                          ("max(x + softplus(exp(1.008e+21)), x)", 0),
                                          ("abs(selu(elu(-1.478))^mish(sqrt(x)))", 1)])
def test_sympy_round_trip_of_overflowing_and_complex_constants(text, points):
    """sympy's cosh(-8.037e40) is a finite Float beyond float64 ('constants must be finite
    numbers, got inf' on the way back); a negative base to a fractional power became complex
    when from_sympy rebuilt 1/b^-e; sorting the Max's arguments evaluated softplus(exp(1e21))
    and mpmath raised OverflowError; sympy wrote |(-0.95)^f| with re(f) and im(f), which had
    no grafs form. The round trips work now."""
    e = grafs.parse(text)
    back = grafs.Expr.from_sympy(e.to_sympy())
    # raises on a changed finite value; ``points``: how many finite points it compares at least
    assert F._same_function(back, e, f"round trip of {text}") >= points


def test_underflow_in_the_original_is_not_a_mismatch():
    """exp(x)^9.021e-18 is 0 at x = -1000 in floats (exp underflows), ≈ 1 in fact; sympy's
    exp(9.021e-18·x) is right there. Points with an underflowed or overflowed intermediate
    are not compared; the harness still compares the rest."""
    e = grafs.parse("sigmoid(softplus(relu({b=-1.59}))*exp(x)^9.021e-18)")
    assert F.check_sympy(e) > 50 and F.check_simplify(e) > 50


def test_periodic_functions_of_huge_arguments_are_not_compared():
    """torch rounds 2.205e26/x one ulp apart for a float and a 0-d tensor numerator, and cos
    of 2.5e26 is then any number in [-1, 1]: not a derivative bug (the eager backend and the
    harness's reference divide the two ways)."""
    e = grafs.parse("sin(min(-(2.205e+26/x), 0.41))")
    F.check_derivative(e)
    # still compared where the argument is moderate
    assert F.check_derivative(grafs.parse("sin(min(-(2.205/x), 0.41))")) > 50


def test_backend_checks_judge_float32_limits():
    """cos(exp(10)) is cos(22026): the triton and eager float32 gradients differed there by an
    ulp of the argument (found by the backends campaign); float32 sin/cos beyond 1e3 are not
    compared. Trainable families have no op-by-op reference: values against eager only."""
    assert F.check_backend(grafs.parse("sin(exp(elu(leaky_relu(x))))"), "python") > 50
    # gelu(x)/x: the float32 backward cancels two 5e5 terms at x = ±1e-6 (triton and eager
    # gave 0.4375 and 0.375); the derivative's intermediates scale the tolerance
    assert F.check_backend(grafs.parse("gelu(clamp(x))/x"), "python") > 50
    r = F.reference(grafs.parse("sin(exp(x))"), F.X64, judged_in=torch.float32)
    assert bool(r.shaky[F.X64 > 7.0].all()) and not bool(r.shaky[F.X64 < 6.0].any())


def test_constants_that_overflow_float64_are_opaque_to_sympy():
    """sympy evaluated gelu(3)^sinh(2.979e41) in arbitrary precision (mpmath computing e to
    ~10^41 bits: no end); such constant parts are opaque symbols that convert back."""
    e = grafs.parse("tanh(hardswish(gelu(3)^sinh(2.979e+41)))*x")
    s = e.to_sympy()
    assert s.has(sympy_bridge.Opaque("hardswish(gelu(3)^sinh(2.979e+41))"))
    assert grafs.Expr.from_sympy(s) is grafs.parse("x*tanh(hardswish(gelu(3)^sinh(2.979e+41)))")
    assert e.latex() and e.simplify()


def test_sympy_evaluates_activations_with_grafs_numerics():
    """sympy evaluated ELU(-2.409e-31) as exp(-2.409e-31) - 1 = 0 in 53-bit Floats, so the
    round trip of x/elu(-2.409e-31) became x/0."""
    e = grafs.parse("selu(-(x/elu(-2.409e-31)))")
    assert F.check_sympy(e) > 50
    import sympy as sp
    assert float(sp.N(grafs.parse("elu(-2.409e-31)").to_sympy())) == -2.409e-31


def test_sympy_internal_errors_do_not_escape_simplify():
    """sympy.simplify raised KeyError('pop from an empty set') from Piecewise's rewriting."""
    e = grafs.parse("step(elu(dyn(relu6(3.141592653589793))))")
    assert str(e.simplify()) == "step(elu(dyn(3.141592653589793)))"


def test_simplify_does_not_hand_sympy_overflowing_constants():
    """cosh(-2.7e13) is inf in float64; sympy's simplify spent minutes and 16 GB on it."""
    e = grafs.parse("selu(-tanh(x)*relu(cosh(-27040000000000)))")
    assert e.simplify() is e


def test_derivative_case_from_the_issue():
    """At x ≤ 0, log(min({1.81}, x)) is NaN, so the function is undefined there: autograd's 0
    (clamp's backward mask) and the chain rule's finite value are both meaningless; wherever
    f is defined (every intermediate a number) they agree."""
    e = grafs.parse("min(sin(erf(-1.733)), log(min({1.81}, x))) "
                    "- max(x/({0.84}*x), exp(min(x, {1.69})))")
    assert F.check_derivative(e, X) > 20
    xt = X.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(run_expr(e, xt).sum(), xt)
    d = run_expr(e.derivative(), X)
    pos = X > 0.05
    torch.testing.assert_close(d[pos], g[pos])


def test_constant_calls_fold():
    assert str(grafs.parse("sigmoid(asinh(0))*erf(x)").simplify()) == "0.5*erf(x)"
    assert grafs.parse("leaky_relu(-2, 0.1)*x").derivative() is grafs.parse("-0.2")


def test_family_of_an_expression_without_x():
    """xielu({a}) got a 0-d tensor and failed inside its module (a torch RuntimeError)."""
    for text in ("xielu(-{c=0.719})", "anact({a=1.32})^x"):
        for backend in ("eager",):
            y = grafs.compile(text, backend=backend)(torch.linspace(-1, 1, 5))
            assert y.shape == (5,)


def test_python_export_clamp_with_one_learnable_bound():
    """torch.minimum(…, 1.0) got a float: clamp's tensor form needs both bounds as tensors."""
    assert F.check_backend(grafs.parse("clamp(x, {a=-0.5}, 1.0)"), "python") > 50


def test_step_of_undefined_values_is_not_compared():
    """step(x/x) is 0 at x = 0 (step(NaN)) and 1 elsewhere; sympy's x/x = 1 extends the
    domain, which is not a changed finite value."""
    assert F.check_simplify(grafs.parse("leaky_relu(step(x/x)) + (x + log(sigmoid(x)))")) > 0


# -- sqrt: what grafs prints is what it evaluates ------------------------------------------------
def test_search_sqrt_keeps_its_floor_in_the_formula():
    from grafs.ops import SEARCH_OPS
    from grafs.grammar.expr import var
    e = SEARCH_OPS["sqrt"].build([var()], [], None)       # unclipped: the discretized form
    assert str(e) == "sqrt(max(x, 0.001))"
    x = torch.tensor([-1.0, 0.0, 1e-4, 4.0], dtype=torch.float64, requires_grad=True)
    y = run_expr(e, x)
    torch.testing.assert_close(y.detach(), torch.tensor([0.001, 0.001, 0.001, 4.0]).sqrt().double())
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all()
    # the reason for the floor (README): a zero floor gives NaN gradients where the input is
    # exactly 0 on an interval, here for every x < 0
    x = torch.tensor([-1.0, -0.5, 0.5, 2.0], dtype=torch.float64)
    for floor, finite in (("0", False), ("0.001", True)):
        xi = x.clone().requires_grad_(True)
        y = run_expr(grafs.parse(f"sqrt(max(relu(x)*tanh(x), {floor}))"), xi)
        (g,) = torch.autograd.grad(y.sum(), xi)
        assert bool(torch.isfinite(g[:2]).all()) == finite


# -- baselines by the names users type -------------------------------------------------------------
def test_baseline_names_accept_formula_spellings():
    from grafs.protocol.evaluate import baseline_names
    assert baseline_names(["gelu", "relu"]) == ["GELU", "ReLU"]
    assert baseline_names(["LeakyReLU", "leaky_relu", "lrelu", "SWISH", "elu"]) == \
        ["LeakyReLU", "SiLU", "ELU"]
    with pytest.raises(GrafsError, match="unknown baseline.*'tanh'.*choose from ReLU, GELU"):
        baseline_names(["gelu", "tanh"])


def test_evaluate_checks_baseline_names_before_training():
    """``grafs evaluate --baselines gelu relu`` passes its names to evaluate() as typed."""
    from grafs.protocol.evaluate import evaluate
    with pytest.raises(GrafsError, match="unknown baseline.*'nope'"):
        evaluate(object(), ["x"], baselines=["gelu", "nope"], progress=False)


# -- found formulas: exact, displayed, and with x ---------------------------------------------------
def test_display_folds_and_rounds():
    from grafs.grammar.display import display
    assert display("sigmoid(asinh(0))*erf(x)") == "0.5*erf(x)"
    d = display("0.47391234567*leaky_relu(x) + 0.5260876543*gelu(x)")
    assert d == "0.5261*gelu(x) + 0.4739*leaky_relu(x)"
    assert grafs.parse(d)


def _degenerate_cell():
    """U0 = γ and U1 = γ feed B0 = add: the highest-α formula is a constant."""
    from grafs.runtime.space import SearchSpace
    space = SearchSpace("B(U(B(U(x), U(x))), U(x))", unary=["gamma", "asinh", "tanh"],
                        binary=["sigmul", "add"])
    cell = space.relax(mode="eager", seed=0)
    with torch.no_grad():
        for a, best in zip(cell.alpha, [0, 0, 1, 1, 0, 0]):   # U0 U1 B0 U2 U3 B1
            a.zero_()
            a[best] = 1.0
        cell.alpha[1][2] = 0.5          # tanh is U1's runner-up
    return cell


def test_degenerate_formula_gets_the_closest_one_with_x():
    from grafs.runtime.discretize import found_formula
    cell = _degenerate_cell()
    assert not cell.discretize().depends_on_x()
    assert cell.chosen_ops(keep_x=True) == ["gamma", "tanh", "add", "asinh", "gamma", "sigmul"]
    with pytest.warns(GrafsWarning, match=r"does not depend on x.*U1: gamma → tanh"):
        e = found_formula(cell)
    assert e.depends_on_x() and e is cell.discretize(keep_x=True)
    cell.drop(100)                      # after the search only γ is left in U0 and U1
    with pytest.warns(GrafsWarning):
        assert found_formula(cell).depends_on_x()


def test_keep_x_sees_cancellation():
    """relu(x) - relu(x) uses both inputs, yet is 0: the choice must be checked on the formula."""
    from grafs.runtime.space import SearchSpace
    cell = SearchSpace("B(U(x), U(x))", unary=["relu", "tanh"], binary=["sub"]).relax(mode="eager")
    with torch.no_grad():
        cell.alpha[0].copy_(torch.tensor([1.0, 0.0]))
        cell.alpha[1].copy_(torch.tensor([1.0, 0.5]))
    assert str(cell.discretize()) == "0"
    assert str(cell.discretize(keep_x=True)) == "relu(x) - tanh(x)"


def test_keep_x_sees_a_formula_constant_by_its_values():
    """min(abs(x), γ) with γ < 0 has x in it but is γ everywhere (an mnist1d search returned
    such a formula): the found formula is the closest choice whose values vary with x."""
    from grafs.runtime.discretize import found_formula, varies_with_x
    from grafs.runtime.space import SearchSpace
    cell = SearchSpace("B(U(x), U(x))", unary=["abs", "gamma", "tanh"],
                       binary=["min", "add"]).relax(mode="eager")
    with torch.no_grad():
        cell.alpha[0].copy_(torch.tensor([1.0, 0.0, 0.5]))     # U0: abs, runner-up tanh
        cell.alpha[1].copy_(torch.tensor([0.0, 1.0, 0.0]))     # U1: γ
        cell.alpha[2].copy_(torch.tensor([1.0, 0.0]))          # B: min
        cell.gamma.fill_(-0.05)
    e = cell.discretize()
    assert e.depends_on_x() and not varies_with_x(e)
    with pytest.warns(GrafsWarning, match="does not depend on x"):
        found = found_formula(cell)
    assert varies_with_x(found)
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    assert run_expr(found, x).std() > 0.1
    assert varies_with_x(grafs.parse("min(abs(x), 0.5)")) and not varies_with_x(grafs.parse("x - x"))


def test_search_result_display_and_exact_formula():
    r = grafs.SearchResult("sigmoid(0.12345678901234)*silu(x) + "
                           "(1 - sigmoid(0.12345678901234))*gelu(x)", {})
    assert r.display == "0.4692*gelu(x) + 0.5308*silu(x)"
    assert grafs.parse(r.formula) is grafs.parse(r.formula)     # the exact one is untouched
    x = torch.linspace(-3, 3, 50, dtype=torch.float64)
    torch.testing.assert_close(run_expr(grafs.parse(r.display), x), run_expr(r.expr, x),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("ops,affine", [(["identity", "mul_gamma"], True),
                                        (["relu", "identity"], False)])
def test_affine_found_formula_is_returned_with_a_warning(ops, affine):
    import warnings
    from grafs.runtime.discretize import found_formula
    from grafs.runtime.space import SearchSpace
    cell = SearchSpace("U(x) + 0.5*U(x)", unary=ops, binary=["add"]).relax("eager", seed=0)
    with torch.no_grad():          # every hole's highest α on its first op
        for a in cell.alpha:
            a.copy_(torch.tensor([1.0, 0.0]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = found_formula(cell)
    assert e is cell.discretize()
    said = [str(w.message) for w in caught if issubclass(w.category, GrafsWarning)]
    assert any("is affine in x" in m for m in said) == affine, said
