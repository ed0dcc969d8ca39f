"""Grammar: the paper's formulas as printed, precedence, implicit multiplication, Unicode,
names and aliases, numbers, learnable parameters, hash-consing and canonical printing."""
import math

import pytest
import torch
import torch.nn.functional as F

import grafs
from grafs.compiler.eager import run_expr
from grafs.grammar.expr import call, const, param, var
from grafs.testing.paper_formulas import PAPER_FORMULAS

X64 = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)


def values(text_or_expr, x=X64):
    e = grafs.parse(text_or_expr) if isinstance(text_or_expr, str) else text_or_expr
    return run_expr(e, x)


def assert_same_function(a, b, x=X64):
    torch.testing.assert_close(values(a, x), values(b, x), rtol=1e-14, atol=1e-14, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# the 15 paper formulas
@pytest.mark.parametrize("name", list(PAPER_FORMULAS))
def test_paper_formula_parses_as_printed(name):
    text, ref = PAPER_FORMULAS[name]
    e = grafs.parse(text)
    assert isinstance(e, grafs.Expr)
    torch.testing.assert_close(run_expr(e, 4 * X64), ref(4 * X64), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", list(PAPER_FORMULAS))
def test_paper_formula_canonical_round_trip(name):
    e = grafs.parse(PAPER_FORMULAS[name][0])
    s = str(e)
    assert grafs.parse(s) is e
    assert str(grafs.parse(s)) == s  # printing is idempotent


def test_paper_formula_canonical_text_examples():
    assert str(grafs.parse("0.4756 ReLU(x) + 0.5244 GELU(x)")) == "0.4756*relu(x) + 0.5244*gelu(x)"
    assert str(grafs.parse("0.6601 GELU(SiLU(x) GELU(x)) + 0.3399 x^2")) == \
        "0.6601*gelu(silu(x)*gelu(x)) + 0.3399*x^2"
    assert str(grafs.parse("(0.4689 GELU(x) + 0.5311) ReLU(x)")) == "(0.4689*gelu(x) + 0.5311)*relu(x)"


# ---------------------------------------------------------------------------------------------
# precedence and associativity
def test_unary_minus_binds_looser_than_power():
    x = X64
    torch.testing.assert_close(values("-x^2"), -(x ** 2), rtol=0, atol=0)
    assert grafs.parse("-x^2") is grafs.parse("-(x^2)")
    assert grafs.parse("-x^2") is not grafs.parse("(-x)^2")
    torch.testing.assert_close(values("(-x)^2"), x ** 2, rtol=0, atol=0)
    assert float(values("-2^2")[0]) == -4.0
    assert float(values("(-2)^2")[0]) == 4.0


def test_power_is_right_associative():
    assert float(values("2^3^2")[0]) == 512.0
    assert float(values("2**3**2")[0]) == 512.0
    assert float(values("(2^3)^2")[0]) == 64.0
    assert grafs.parse("2^3^2") is grafs.parse("2^(3^2)")


def test_power_with_signed_exponent():
    x = torch.tensor([0.5, 2.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(values("x**-2", x), x ** -2.0)
    torch.testing.assert_close(values("x^-2", x), x ** -2.0)
    assert grafs.parse("x**-2") is grafs.parse("x^(-2)")
    torch.testing.assert_close(values("2^-x", x), 2.0 ** -x)


def test_sum_and_product_left_associative():
    torch.testing.assert_close(values("8 - 3 - 2"), torch.full_like(X64, 3.0))
    torch.testing.assert_close(values("16 / 4 / 2"), torch.full_like(X64, 2.0))
    torch.testing.assert_close(values("1 + 2 * 3"), torch.full_like(X64, 7.0))
    torch.testing.assert_close(values("x - -x"), 2 * X64)


@pytest.mark.parametrize("text,ref", [
    ("2x", lambda x: 2 * x),
    ("2 x", lambda x: 2 * x),
    ("x (x+1)", lambda x: x * (x + 1)),
    ("x(x+1)", lambda x: x * (x + 1)),
    ("(x+1)(x-1)", lambda x: (x + 1) * (x - 1)),
    ("2(x+1)", lambda x: 2 * (x + 1)),
    ("2x^2", lambda x: 2 * x ** 2),           # juxtaposition binds looser than ^
    ("x^2 x", lambda x: x ** 3),
    ("0.4739 LeakyReLU(x)", lambda x: 0.4739 * F.leaky_relu(x)),
    ("SiLU(x) GELU(x)", lambda x: F.silu(x) * F.gelu(x)),
    ("(0.5 x + 1) GELU(x)", lambda x: (0.5 * x + 1) * F.gelu(x)),
    ("0.4781 ReLU(x)^2", lambda x: 0.4781 * torch.relu(x) ** 2),
    ("3 sinh(x) gelu(x)", lambda x: 3 * torch.sinh(x) * F.gelu(x)),
    ("1/2 x", lambda x: 0.5 * x),              # same level as / : (1/2)·x
    ("pi x", lambda x: math.pi * x),
])
def test_implicit_multiplication(text, ref):
    torch.testing.assert_close(values(text), ref(X64), rtol=1e-14, atol=1e-14)


def test_implicit_multiplication_same_node_as_explicit():
    assert grafs.parse("2x") is grafs.parse("2*x")
    assert grafs.parse("x (x+1)") is grafs.parse("x*(x+1)")
    assert grafs.parse("0.4739 LeakyReLU(x)") is grafs.parse("0.4739*leaky_relu(x)")


# ---------------------------------------------------------------------------------------------
# Unicode, names, aliases
def test_unicode_operators():
    assert grafs.parse("x − 1") is grafs.parse("x - 1")
    assert grafs.parse("−x") is grafs.parse("-x")
    assert grafs.parse("2·x") is grafs.parse("2*x")
    assert grafs.parse("2×x") is grafs.parse("2*x")
    assert grafs.parse("σ(x)") is grafs.parse("sigmoid(x)")
    torch.testing.assert_close(values("σ(x)·x − 1"), torch.sigmoid(X64) * X64 - 1)


@pytest.mark.parametrize("variants", [
    ("relu(x)", "ReLU(x)", "RELU(x)", "Relu(x)"),
    ("gelu(x)", "GELU(x)", "Gelu(x)"),
    ("silu(x)", "SiLU(x)", "SILU(x)", "swish(x)"),
    ("elu(x)", "ELU(x)", "Elu(x)"),
    ("leaky_relu(x)", "LeakyReLU(x)", "leakyrelu(x)", "LEAKY_RELU(x)", "lrelu(x)"),
    ("sinh(x)", "SINH(x)", "Sinh(x)"),
    ("sigmoid(x)", "σ(x)", "Sigmoid(x)", "logistic(x)", "sigma(x)"),
    ("asinh(x)", "arcsinh(x)"),
    ("atan(x)", "arctan(x)"),
    ("log(x)", "ln(x)", "LOG(x)"),
    ("sign(x)", "sgn(x)"),
    ("max(x, 0)", "maximum(x, 0)", "MAX(x, 0)"),
])
def test_case_insensitive_names_and_aliases_are_one_node(variants):
    nodes = [grafs.parse(v) for v in variants]
    assert all(n is nodes[0] for n in nodes)
    # the canonical name is printed
    assert str(nodes[0]) == variants[0]


def test_default_scalars_are_the_same_node():
    assert grafs.parse("leaky_relu(x)") is grafs.parse("leaky_relu(x, 0.01)")
    assert grafs.parse("elu(x)") is grafs.parse("elu(x, 1)")
    assert str(grafs.parse("leaky_relu(x, 0.01)")) == "leaky_relu(x)"
    e = grafs.parse("leaky_relu(x, 0.2)")
    assert e is not grafs.parse("leaky_relu(x)")
    assert str(e) == "leaky_relu(x, 0.2)"
    torch.testing.assert_close(run_expr(e, X64), F.leaky_relu(X64, 0.2))


# ---------------------------------------------------------------------------------------------
# numbers
@pytest.mark.parametrize("text,value", [
    ("2", 2.0), ("0.4739", 0.4739), (".5", 0.5), ("5.", 5.0), ("1e-4", 1e-4), ("1E-4", 1e-4),
    ("6.02E+23", 6.02e23), ("2.5e3", 2500.0), ("-1.5e-3", -1.5e-3), ("1e308", 1e308),
])
def test_scientific_numbers(text, value):
    e = grafs.parse(text)
    assert e.is_const and e.value == value
    assert grafs.parse(str(e)) is e


def test_number_juxtaposed_with_x():
    torch.testing.assert_close(values("1e-3x"), 1e-3 * X64)
    torch.testing.assert_close(values("2.5e1 x"), 25.0 * X64)


def test_negative_literal_is_a_constant():
    e = grafs.parse("-0.5")
    assert e.is_const and e.value == -0.5
    assert grafs.parse("-0.5*x") is grafs.parse("(-0.5)*x")


# ---------------------------------------------------------------------------------------------
# learnable parameters
def test_named_and_anonymous_params():
    e = grafs.parse("{a=0.5}*x + {0.25} + {b=-1.5e-1} gelu(x)")
    p = e.params()
    assert p["a"] == 0.5 and p["b"] == -0.15
    anon = [k for k in p if k not in ("a", "b")]
    assert len(anon) == 1 and p[anon[0]] == 0.25
    torch.testing.assert_close(run_expr(e, X64), 0.5 * X64 + 0.25 - 0.15 * F.gelu(X64))
    # a parameter used twice is one node
    e2 = grafs.parse("{a=0.5}*x + {a=0.5}")
    assert len([n for n in e2.nodes() if n.op == "param"]) == 1
    torch.testing.assert_close(run_expr(e2, X64), 0.5 * X64 + 0.5)


def test_param_round_trip_and_override():
    e = grafs.parse("{a=0.5} x^2 + {b=2} sinh(x)")
    assert grafs.parse(str(e)) is e
    v = run_expr(e, X64, {"a": torch.tensor(3.0, dtype=torch.float64)})
    torch.testing.assert_close(v, 3.0 * X64 ** 2 + 2.0 * torch.sinh(X64))


def test_param_as_op_scalar():
    e = grafs.parse("leaky_relu(x, {s=0.2})")
    torch.testing.assert_close(run_expr(e, X64), F.leaky_relu(X64, 0.2))
    assert e.params() == {"s": 0.2}


# ---------------------------------------------------------------------------------------------
# hash-consing
def test_hash_consing_shares_subexpressions():
    e = grafs.parse("0.6601 GELU(SiLU(x) GELU(x)) + 0.3399 x^2")
    g = e.graph
    ops = [d["op"] for _, d in g.nodes(data=True)]
    # x, silu, gelu(x), mul, gelu(mul), 0.6601, mul, 2, pow, 0.3399, mul, add
    assert g.number_of_nodes() == len(e.nodes()) == 12
    assert ops.count("x") == 1 and ops.count("gelu") == 2 and ops.count("silu") == 1
    xs = [n for n, d in g.nodes(data=True) if d["op"] == "x"]
    assert g.out_degree(xs[0]) == 3  # silu(x), gelu(x), x^2 all read the one x node
    gelu_of_x = [n for n, d in g.nodes(data=True) if d["op"] == "gelu" and list(g.predecessors(n)) == xs]
    assert len(gelu_of_x) == 1
    assert g.graph["root"] == g.number_of_nodes() - 1


def test_repeated_subexpression_is_one_node():
    e = grafs.parse("SiLU(x) GELU(x) + GELU(x) + gelu(x)^2")
    g = e.graph
    gelus = [n for n, d in g.nodes(data=True) if d["op"] == "gelu"]
    assert len(gelus) == 1
    assert g.out_degree(gelus[0]) == 3  # mul, add, pow
    sq = grafs.parse("x*x").graph
    (edge,) = sq.edges(data=True)
    assert edge[2]["positions"] == [0, 1]


def test_parse_twice_returns_identical_object():
    for text, _ in PAPER_FORMULAS.values():
        assert grafs.parse(text) is grafs.parse(text)
    a = grafs.parse("gelu(x) + relu(x)")
    b = call("add", call("gelu", var()), call("relu", var()))
    assert a is b
    assert const(2.0) is const(2) and param("a", 0.5) is param("a", 0.5)
    assert const(0.0) is not const(-0.0)


def test_expr_is_immutable():
    e = grafs.parse("gelu(x)")
    with pytest.raises(AttributeError):
        e.op = "relu"


# ---------------------------------------------------------------------------------------------
# canonical printing
@pytest.mark.parametrize("text", [
    "-x^2", "(-x)^2", "2^3^2", "(2^3)^2", "x^-2", "x - (x - 1)", "x*(x*x)", "x/(x/2)",
    "x*-x", "-x*x", "--x", "-(x + 1)", "-(2*x)", "(-2)^x", "x^x^x", "(x^x)^x", "x - -2",
    "leaky_relu(x, 0.2)", "clamp(x, -2, 3)", "{a=-0.5}*x", "1e-05*x + 1e+20", "x*-0.0",
    "2^(x + 1)", "x^(2*x)", "exp(-x^2/2)",
])
def test_print_round_trip_and_idempotent(text):
    e = grafs.parse(text)
    s = str(e)
    assert grafs.parse(s) is e, s
    assert str(grafs.parse(s)) == s
    assert_same_function(text, s)


def test_print_round_trip_right_nested_sum():
    e = grafs.parse("x + (0.7 - x)")
    assert grafs.parse(str(e)) is e
    x = torch.tensor([2.0 ** 53], dtype=torch.float64)
    assert float(run_expr(grafs.parse(str(e)), x)) == float(run_expr(e, x)) == 1.0


def test_print_round_trip_api_built():
    x = var()
    for e in [x * (x * x), x - (x - 1.0), -(-x), x * (-x), x / (x / x), x ** (x ** x), (x ** x) ** x,
              call("gelu", call("silu", x) * call("gelu", x)) * 0.66 + 0.34 * x ** 2.0]:
        s = str(e)
        assert grafs.parse(s) is e
        assert str(grafs.parse(s)) == s
