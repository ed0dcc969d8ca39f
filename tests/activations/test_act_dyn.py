"""dynActivation (seeds/002): f(x) = base(x)·(α − β) + β·x."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from grafs.activations.dyn import DynActivation, DynTerm, dyn
from grafs.activations.xielu import XIELU
from grafs.errors import GrafsError

BASES = [nn.ReLU(), nn.GELU(), nn.SiLU(), nn.Mish(), torch.tanh, lambda x: F.leaky_relu(x, 0.01), XIELU()]


@pytest.mark.parametrize("base", BASES)
def test_equals_base_at_init(base):
    m = DynActivation(base)
    assert m.alpha.item() == 1.0 and m.beta.item() == 0.0
    x = torch.randn(2, 3, 100) * 4
    assert torch.equal(m(x), base(x))


def test_formula_and_linear_limit():
    m = DynActivation(nn.GELU())
    with torch.no_grad():
        m.alpha.fill_(0.75); m.beta.fill_(-0.08)
    x = torch.randn(1000) * 3
    torch.testing.assert_close(m(x), F.gelu(x) * (0.75 + 0.08) - 0.08 * x)
    with torch.no_grad():
        m.alpha.fill_(0.5); m.beta.fill_(0.5)            # α = β: exactly linear
    torch.testing.assert_close(m(x), 0.5 * x)
    term = DynTerm(alpha_init=0.5, beta_init=0.5)
    torch.testing.assert_close(term(F.gelu(x), x), m(x))
    torch.testing.assert_close(m.forward_parts(F.gelu(x), x), m(x))
    assert set(term.state_dict()) == {"alpha", "beta"} == set(DynActivation(torch.tanh).state_dict())


def test_gradcheck_float64():
    x = torch.randn(30, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: dyn(F.silu(x), x, a, b), (x, a, b))
    assert torch.autograd.gradgradcheck(lambda x, a, b: dyn(torch.tanh(x), x, a, b), (x, a, b))
    m = DynActivation(nn.SiLU()).double()
    y = m(x)
    ga, gb = torch.autograd.grad(y.sum(), (m.alpha, m.beta))
    torch.testing.assert_close(ga, F.silu(x).sum())
    torch.testing.assert_close(gb, (x - F.silu(x)).sum())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    m = DynActivation(nn.SiLU(), alpha_init=0.9, beta_init=0.1)
    x = (torch.randn(256) * 3).to(dtype).requires_grad_(True)
    y = m(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert m.alpha.grad.dtype == torch.float32 and x.grad.dtype == dtype
    xf = x.detach().float()
    torch.testing.assert_close(y, (F.silu(x.detach()).float() * 0.8 + 0.1 * xf).to(dtype))


def test_state_dict_round_trip():
    a = DynActivation(nn.ReLU(), alpha_init=0.6, beta_init=0.3)
    b = DynActivation(nn.ReLU())
    b.load_state_dict(a.state_dict())
    x = torch.randn(50)
    torch.testing.assert_close(b(x), a(x))


@pytest.mark.parametrize("kwargs", [dict(alpha_init=float("nan")), dict(beta_init="0"), dict(alpha_init=True)])
def test_bad_arguments(kwargs):
    with pytest.raises(GrafsError):
        DynActivation(nn.ReLU(), **kwargs)
    with pytest.raises(GrafsError):
        DynActivation(None)
