"""The found formula is returned minus its value at 0 (grafs.runtime.discretize.centred)."""
import math

import pytest
import torch

import grafs
from grafs.runtime.discretize import centred
from grafs.runtime.space import SearchSpace
from grafs.searching.loop import search
from tests.test_search import data, model


@pytest.mark.parametrize("formula,at0", [("0.7016*abs(x) + 0.4989", 0.4989), ("sigmoid(x)", 0.5),
                                         ("exp(x)", 1.0), ("sqrt(max(x, 0.001))", math.sqrt(0.001))])
def test_centred_subtracts_the_value_at_zero_and_nothing_else(formula, at0):
    e = centred(grafs.parse(formula))
    assert str(grafs.parse(str(e))) == str(e)                       # parses back the same
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    f = grafs.compile(formula, backend="eager").double()
    g = grafs.compile(str(e), backend="eager").double()
    torch.testing.assert_close(g(x), f(x) - at0, rtol=0, atol=1e-12)
    assert abs(float(g(torch.zeros(1, dtype=torch.float64)))) < 1e-15


@pytest.mark.parametrize("formula", ["relu(x)", "gelu(x)", "tanh(x)", "x*sigmoid(x)"])
def test_centred_leaves_formulas_that_are_zero_at_zero_alone(formula):
    e = grafs.parse(formula)
    assert centred(e) is e


def test_centred_leaves_a_non_finite_value_at_zero_alone():
    e = grafs.parse("log(abs(x))")
    assert centred(e) is e


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
def test_a_search_returns_its_formula_centred_and_keeps_the_cells_own():
    space = SearchSpace("U(x)", unary=["sigmoid", "exp"], binary=["add"])
    r = search(model(), data(), space=space, epochs=3, seed=0, batch_size=32, progress=False)
    raw = r.history["uncentred_formula"]
    assert raw == r.history["formula"][-1] and raw in ("sigmoid(x)", "exp(x)")
    assert r.formula == str(centred(grafs.parse(raw)))
    assert abs(float(r.activation(torch.zeros(1)))) < 1e-6
