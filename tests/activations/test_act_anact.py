"""ANAct (seeds/004): ρ, ρ′, λ against quadrature, running buffers, outliers, terms."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import integrate, special

from grafs.activations.anact import ANAct, ANActTerm, anact_lambda
from grafs.errors import GrafsError

# (δ, δ′) in numpy for the quadrature
_NP = {
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: float(x > 0)),
    "silu": (lambda x: x * special.expit(x),
             lambda x: special.expit(x) * (1 + x * (1 - special.expit(x)))),
    "gelu": (lambda x: x * special.ndtr(x),
             lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
}
_TORCH = {"relu": nn.ReLU(), "silu": nn.SiLU(), "gelu": nn.GELU(), "tanh": torch.tanh}


def gaussian_expectation(f, sigma):
    dens = lambda x: math.exp(-x * x / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))
    lo, _ = integrate.quad(lambda x: f(x) * dens(x), -np.inf, 0.0, limit=200)
    hi, _ = integrate.quad(lambda x: f(x) * dens(x), 0.0, np.inf, limit=200)
    return lo + hi


def quadrature_values(name, sigma):
    d, dp = _NP[name]
    rho = gaussian_expectation(lambda x: d(x) ** 2, sigma) / sigma ** 2
    rho_p = gaussian_expectation(lambda x: dp(x) ** 2, sigma)
    mu = gaussian_expectation(d, sigma)
    lam = math.sqrt((rho + rho_p) / (2 * rho * rho_p))
    return rho, rho_p, mu, lam


def test_relu_unit_gaussian_closed_form():
    rho, rho_p, mu, lam = quadrature_values("relu", 1.0)
    assert rho == pytest.approx(0.5, abs=1e-9) and rho_p == pytest.approx(0.5, abs=1e-9)
    assert lam == pytest.approx(math.sqrt(2), abs=1e-9)
    assert mu == pytest.approx(1 / math.sqrt(2 * math.pi), abs=1e-9)


@pytest.mark.parametrize("name", ["relu", "silu", "gelu", "tanh"])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_statistics_match_quadrature(name, sigma):
    g = torch.Generator().manual_seed(1234)
    h = torch.randn(2_000_000, generator=g) * sigma
    act = ANAct(_TORCH[name])
    out = act(h)                                   # one training step: t = 0 takes the batch values
    rho, rho_p, mu, lam = quadrature_values(name, sigma)
    assert act.running_rho.item() == pytest.approx(rho, rel=1e-2)
    assert act.running_rho_prime.item() == pytest.approx(rho_p, rel=1e-2)
    assert act.running_mean.item() == pytest.approx(mu, rel=1e-2, abs=2e-3)
    assert act.lambda_ == pytest.approx(lam, rel=1e-2)
    # output = (λ + 0.3·tanh(0))·(δ(h) − μ), with the batch statistics (t = 0)
    delta = _TORCH[name](h)
    expected = act.lambda_ * (delta - act.running_mean)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # the normalized activation has ρ ≈ ρ′ ≈ 1 in the sense of Eq. 11/12 (harmonic compromise)
    assert 1.0 / (lam ** 2 * rho) + 1.0 / (lam ** 2 * rho_p) == pytest.approx(2.0, rel=1e-9)


def test_explicit_derivative_equals_autograd():
    h = torch.randn(10000, generator=torch.Generator().manual_seed(0)) * 1.3
    a = ANAct(F.silu)
    b = ANAct(F.silu, derivative=lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))))
    torch.testing.assert_close(a(h), b(h))
    torch.testing.assert_close(a.running_rho_prime, b.running_rho_prime)


def test_running_buffers_momentum_and_state_dict():
    torch.manual_seed(0)
    act = ANAct(nn.ReLU(), momentum=0.25)
    keys = set(act.state_dict())
    assert {"a", "running_rho", "running_rho_prime", "running_mean", "num_batches_tracked"} == keys
    h1 = torch.randn(50000)
    act(h1)
    r1, rp1, m1 = act.running_rho.item(), act.running_rho_prime.item(), act.running_mean.item()
    h2 = torch.randn(50000) * 1.2 + 0.1
    y2 = act(h2)
    d2 = torch.relu(h2)
    rho_m = ((d2 ** 2).mean() / h2.var(correction=0)).item()
    rhop_m = (h2 > 0).float().mean().item()
    mu_m = d2.mean().item()
    assert act.running_rho.item() == pytest.approx(0.25 * rho_m + 0.75 * r1, rel=1e-5)
    assert act.running_rho_prime.item() == pytest.approx(0.25 * rhop_m + 0.75 * rp1, rel=1e-5)
    assert act.running_mean.item() == pytest.approx(0.25 * mu_m + 0.75 * m1, rel=1e-5)
    assert int(act.num_batches_tracked) == 2
    # training output uses the updated running statistics
    lam = anact_lambda(act.running_rho, act.running_rho_prime)
    torch.testing.assert_close(y2, lam * (d2 - act.running_mean), rtol=1e-5, atol=1e-6)
    # round trip
    with torch.no_grad():
        act.a.fill_(0.4)
    other = ANAct(nn.ReLU())
    other.load_state_dict(act.state_dict())
    act.eval(); other.eval()
    x = torch.randn(100)
    torch.testing.assert_close(other(x), act(x))


def test_eval_uses_buffers_and_does_not_update():
    act = ANAct(torch.tanh)
    with torch.no_grad():
        act.running_rho.fill_(0.3)
        act.running_rho_prime.fill_(0.6)
        act.running_mean.fill_(0.05)
        act.a.fill_(-0.7)
    act.eval()
    x = torch.randn(1000) * 4
    y = act(x)
    lam = math.sqrt((0.3 + 0.6) / (2 * 0.3 * 0.6))
    expected = (lam + 0.3 * math.tanh(-0.7)) * (torch.tanh(x) - 0.05)
    torch.testing.assert_close(y, expected)
    assert act.running_rho.item() == pytest.approx(0.3) and int(act.num_batches_tracked) == 0
    # eval never needs δ′
    calls = []
    act2 = ANAct(torch.tanh, derivative=lambda t: calls.append(1) or (1 - torch.tanh(t) ** 2))
    act2.eval(); act2(x)
    assert calls == []


def test_outlier_rejection():
    act = ANAct(torch.tanh, momentum=0.5, lower=0.5, upper=2.0)
    g = torch.Generator().manual_seed(5)
    act(torch.randn(100000, generator=g))                     # σ = 1: ρ ≈ 0.39, ρ′ ≈ 0.46
    r0, rp0, m0 = act.running_rho.item(), act.running_rho_prime.item(), act.running_mean.item()
    h = torch.randn(100000, generator=g) * 10 + 0.5           # ρ ≈ 0.01, ρ′ ≈ 0.08: both outliers
    t = torch.tanh(h)
    rho_m = ((t ** 2).mean() / h.var(correction=0)).item()
    rhop_m = ((1 - t ** 2) ** 2).mean().item()
    assert rho_m < 0.5 * r0 and rhop_m < 0.5 * rp0
    act(h)
    assert act.running_rho.item() == r0 and act.running_rho_prime.item() == rp0
    # μ has no outlier test (Eq. 16): it moves
    assert act.running_mean.item() == pytest.approx(0.5 * t.mean().item() + 0.5 * m0, rel=1e-5)
    # a batch inside the band is blended in
    h = torch.randn(100000, generator=g) * 1.3
    t = torch.tanh(h)
    rho_m = ((t ** 2).mean() / h.var(correction=0)).item()
    assert 0.5 * r0 < rho_m < 2 * r0
    act(h)
    assert act.running_rho.item() == pytest.approx(0.5 * rho_m + 0.5 * r0, rel=1e-5)
    # an upper outlier (ρ′ of ReLU-like δ(h) = 3h: ρ′ = 9 ≫ 2·ρ′) is rejected too
    act3 = ANAct(lambda x: x)                                  # ρ = ρ′ = 1
    act3(torch.randn(1000))
    r3, rp3 = act3.running_rho.item(), act3.running_rho_prime.item()
    assert rp3 == pytest.approx(1.0)
    act3.base = lambda x: 3 * x                                # ρ and ρ′ jump ×9
    act3(torch.randn(1000))
    assert act3.running_rho.item() == r3 and act3.running_rho_prime.item() == rp3
    # non-finite batch estimates (Var[h] = 0) are ignored
    before = act.running_rho.item()
    act(torch.full((100,), 0.3))
    assert act.running_rho.item() == before and math.isfinite(act.lambda_)


def test_no_gradient_through_statistics_and_gradcheck():
    act = ANAct(torch.tanh).double()
    h = torch.randn(200, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        act.a.fill_(0.2)
    y = act(h)                                                 # training mode
    gout = torch.randn_like(y)
    gh, ga = torch.autograd.grad(y, (h, act.a), gout)
    lam = anact_lambda(act.running_rho, act.running_rho_prime).double()
    gain = lam + 0.3 * math.tanh(0.2)
    torch.testing.assert_close(gh, gout * gain * (1 - torch.tanh(h.detach()) ** 2))
    expected_ga = (gout * 0.3 * (1 - math.tanh(0.2) ** 2) * (torch.tanh(h.detach()) - act.running_mean.double())).sum()
    torch.testing.assert_close(ga, expected_ga)
    act.eval()
    assert torch.autograd.gradcheck(lambda x, a: _with_a(act, a)(x), (h, act.a.detach().clone().requires_grad_(True)))


def _with_a(act, a):
    def f(x):
        return torch.func.functional_call(act, {"a": a}, (x,))
    return f


def test_term_equals_module():
    h = torch.randn(3000, generator=torch.Generator().manual_seed(3)) * 2
    act = ANAct(nn.GELU())
    term = ANActTerm()
    assert set(term.state_dict()) == set(act.state_dict())
    for _ in range(3):
        delta = F.gelu(h)
        dprime = torch.special.ndtr(h) + h * torch.exp(-h * h / 2) / math.sqrt(2 * math.pi)
        torch.testing.assert_close(term(h, delta, dprime), act(h), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(act.forward_parts(h, delta, dprime), term(h, delta, dprime), rtol=1e-5, atol=1e-6)
        h = h * 1.1
    term.eval()
    torch.testing.assert_close(term(h, F.gelu(h), None), (term.lambda_) * (F.gelu(h) - term.running_mean))
    term.train()
    with pytest.raises(GrafsError, match="delta_prime"):
        term(h, F.gelu(h), None)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    act = ANAct(nn.SiLU())
    h = (torch.randn(4096) * 1.5).to(dtype).requires_grad_(True)
    y = act(h)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert act.a.grad.dtype == torch.float32 and h.grad.dtype == dtype
    ref = ANAct(nn.SiLU())
    yref = ref(h.detach().float())
    torch.testing.assert_close(y.float(), yref, rtol=2e-2, atol=2e-2)
    assert act.running_rho.dtype == torch.float32
    assert act.running_rho.item() == pytest.approx(ref.running_rho.item(), rel=1e-2)


@pytest.mark.parametrize("kwargs", [dict(momentum=0.0), dict(momentum=1.5), dict(lower=1.0),
                                    dict(upper=0.9), dict(lower=-0.1), dict(scale=-1.0),
                                    dict(momentum=float("nan")), dict(derivative=3)])
def test_bad_arguments(kwargs):
    with pytest.raises(GrafsError):
        ANAct(torch.tanh, **kwargs)
    with pytest.raises(GrafsError):
        ANAct("relu")
