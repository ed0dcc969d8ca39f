"""Op-output normalisation of a search space (grafs.runtime.normalize)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import grafs
from grafs.searching.loop import search as search_once
from grafs.compiler.eager import run_expr
from grafs.runtime.normalize import op_scale
from grafs.runtime.space import SearchSpace


def _gauss_rms(f) -> float:
    """RMS of f(z), z ~ N(0, 1), by Gauss–Hermite quadrature (a reference independent of the
    Monte-Carlo estimate grafs uses)."""
    t, w = np.polynomial.hermite_e.hermegauss(200)
    return math.sqrt(float(np.sum(w * f(t) ** 2) / np.sum(w)))


@pytest.mark.parametrize("op, f", [
    ("relu", lambda z: np.maximum(z, 0)),
    ("tanh", np.tanh),
    ("sigmoid", lambda z: 1 / (1 + np.exp(-z))),
    ("identity", lambda z: z),
    ("exp", lambda z: np.exp(np.minimum(z, np.log(10.0)))),   # clipped at ln ℓ as in a search
])
def test_unary_scales_match_quadrature(op, f):
    assert op_scale(op, 10.0) == pytest.approx(1 / _gauss_rms(f), rel=0.02)


def test_binary_scales_and_constants():
    assert op_scale("add", 10.0) == pytest.approx(1 / math.sqrt(2), rel=0.02)   # a + b
    assert op_scale("mul", 10.0) == pytest.approx(1.0, rel=0.03)                # E[a²b²] = 1
    assert op_scale("gamma", 10.0) == pytest.approx(1.0)                        # γ = 1 at init


def _discrete(mode: str, normalize: bool, seed: int = 0):
    c = SearchSpace.grafs(normalize=normalize).relax(mode=mode, seed=seed)
    with torch.no_grad():
        for a in c.alpha:
            a.uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))
    c.drop(c.num_active() - c.num_holes)
    return c


@pytest.mark.parametrize("mode", ["eager", "lean"])
def test_discretized_formula_is_the_normalised_cell(mode):
    c = _discrete(mode, True)
    x = torch.linspace(-3, 3, 257, dtype=torch.float32)
    f = c.discretize()
    got = grafs.compile(str(f), backend="eager")(x)
    torch.testing.assert_close(c.forward_unclipped(x), got, rtol=1e-5, atol=1e-5)
    plain = _discrete(mode, False)
    assert plain.chosen_ops() == c.chosen_ops()        # the same ops, other constants
    assert str(plain.discretize()) != str(f)


@pytest.mark.parametrize("mode", ["eager", "lean"])
def test_relaxed_normalised_cell_scales_the_weights(mode):
    norm = SearchSpace.grafs(normalize=True).relax(mode=mode, seed=1)
    plain = SearchSpace.grafs().relax(mode=mode, seed=1)
    w = norm.sample_weights()
    x = torch.randn(4, 33)
    torch.testing.assert_close(norm(x, w), plain(x, w * norm.scale), rtol=1e-5, atol=1e-6)
    assert "scale" not in norm.state_dict()              # constants, not state
    assert plain.scale is None


def test_search_records_normalize_in_settings():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    space = SearchSpace("B(U(x), U(x))", unary=["relu", "tanh", "exp"], binary=["add", "mul"],
                        normalize=True)
    r = search_once(model, (x, y), space=space, epochs=3, batch_size=32, progress=False)
    assert r.settings["normalize"] is True
    grafs.parse(r.formula)


def test_scaled_baselines_carry_one_over_rms_on_a_standard_normal():
    """Each scaled baseline is c·op with c = 1/sqrt(E[op(z)²]), z ~ N(0, 1): checked against
    a quadrature of the density (√2 for ReLU, Kaiming's gain) to the Monte Carlo error."""
    import math
    import grafs
    from grafs.protocol.evaluate import scaled_baselines
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    phi = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    got = scaled_baselines()
    assert list(got) == ["1.412·ReLU", "1.530·GELU", "1.673·SiLU", "1.243·ELU", "1.412·LeakyReLU"]
    for name, formula in got.items():
        c, op = formula.split("*", 1)
        f = run_expr(grafs.parse(op), z)
        want = 1 / math.sqrt(float(torch.trapezoid(f * f * phi, z)))
        assert math.isclose(float(c), want, rel_tol=5e-3), name
    assert math.isclose(float(got["1.412·ReLU"].split("*")[0]), math.sqrt(2), rel_tol=5e-3)
