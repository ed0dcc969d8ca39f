"""XIELU / XIPReLU: the appendix code of seeds/003, the fused Function, dtypes, state dicts."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from grafs.activations.xielu import XIELU, XIPReLU, inverse_softplus, xielu, xiprelu
from grafs.errors import GrafsError


# --- seeds/003 Appendix A.3 and A.6, transcribed; the only change: torch.exp of a Python
# float raises, so the init values are wrapped in torch.tensor(...).
class AppendixXIELU(nn.Module):
    def __init__(self, alpha_p_init=0.8, alpha_n_init=0.8, beta=0.5, eps=-1e-6):
        super(AppendixXIELU, self).__init__()
        self.beta = beta
        self.alpha_p = nn.Parameter(torch.log(torch.exp(torch.tensor(alpha_p_init)) - 1))
        self.alpha_n = nn.Parameter(torch.log(torch.exp(torch.tensor(alpha_n_init - self.beta)) - 1))
        self.eps = torch.tensor(eps)

    def forward(self, x):
        alpha_p = F.softplus(self.alpha_p)
        alpha_n = self.beta + F.softplus(self.alpha_n)
        return torch.where(x > 0,
                           alpha_p * x * x + self.beta * x,
                           alpha_n * torch.expm1(torch.min(x, self.eps)) - alpha_n * x + self.beta * x)


class AppendixXIPReLU(nn.Module):
    def __init__(self, alpha_p_init=0.8, alpha_n_init=0.8, beta=0.5):
        super(AppendixXIPReLU, self).__init__()
        self.beta = beta
        self.alpha_p = nn.Parameter(torch.log(torch.exp(torch.tensor(alpha_p_init)) - 1))
        self.alpha_n = nn.Parameter(torch.log(torch.exp(torch.tensor(alpha_n_init)) - 1))

    def forward(self, x):
        alpha_p = F.softplus(self.alpha_p)
        alpha_n = F.softplus(self.alpha_n)
        return torch.where(x > 0,
                           alpha_p * x * x + self.beta * x,
                           alpha_n * x * x + self.beta * x)


PAIRS = [(XIELU, AppendixXIELU), (XIPReLU, AppendixXIPReLU)]
SPECIAL = [0.0, 1e-10, -1e-10, 1e10, -1e10, -1e-6, 1e-6, -1.0, 2.0]


def _grads(module, x, g):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(g)
    return y.detach(), x.grad, module.alpha_p.grad.clone(), module.alpha_n.grad.clone()


@pytest.mark.parametrize("cls,appendix", PAIRS)
@pytest.mark.parametrize("fused", [True, False])
def test_matches_appendix_code(cls, appendix, fused):
    torch.manual_seed(0)
    ref = appendix()
    mod = cls(fused=fused)
    # same init (to float32 rounding) ...
    assert torch.allclose(mod.alpha_p.detach().reshape(()), ref.alpha_p.detach(), atol=1e-6)
    assert torch.allclose(mod.alpha_n.detach().reshape(()), ref.alpha_n.detach(), atol=1e-6)
    x = torch.cat([torch.randn(4096) * 4, torch.tensor(SPECIAL[:3] + SPECIAL[5:])])
    for a_p, a_n in [(None, None), (0.3, -1.2), (-2.0, 1.5)]:
        if a_p is not None:
            with torch.no_grad():
                ref.alpha_p.fill_(a_p); ref.alpha_n.fill_(a_n)
                mod.alpha_p.fill_(a_p); mod.alpha_n.fill_(a_n)
        else:
            with torch.no_grad():
                mod.alpha_p.copy_(ref.alpha_p); mod.alpha_n.copy_(ref.alpha_n)
        torch.testing.assert_close(mod(x), ref(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls,appendix", PAIRS)
def test_init_values_and_state_dict_layout(cls, appendix):
    mod = cls()
    assert mod.alpha_p_value == pytest.approx(0.8, abs=1e-6)
    assert mod.alpha_n_value == pytest.approx(0.8, abs=1e-6)
    assert float(mod.beta) == 0.5
    keys = set(mod.state_dict())
    expected = {"alpha_p", "alpha_n", "beta"} | ({"eps"} if cls is XIELU else set())
    assert keys == expected
    assert mod.alpha_p.shape == (1,) and mod.alpha_n.shape == (1,)
    if cls is XIELU:
        assert float(mod.eps) == pytest.approx(-1e-6)
        # a_n is inverse-softplus(0.8 - beta)
        assert float(mod.alpha_n.detach()) == pytest.approx(math.log(math.expm1(0.3)), abs=1e-6)


@pytest.mark.parametrize("cls", [XIELU, XIPReLU])
def test_fused_equals_reference_grads(cls):
    torch.manual_seed(1)
    fused, ref = cls(fused=True).double(), cls(fused=False).double()
    with torch.no_grad():
        for m in (fused, ref):
            m.alpha_p.fill_(0.37); m.alpha_n.fill_(-0.55)
    x = torch.cat([torch.randn(2000, dtype=torch.float64) * 5,
                   torch.tensor(SPECIAL, dtype=torch.float64),
                   fused.state_dict().get("eps", torch.zeros(1)).double().reshape(1)])
    g = torch.randn_like(x)
    yf, gxf, gpf, gnf = _grads(fused, x, g)
    yr, gxr, gpr, gnr = _grads(ref, x, g)
    torch.testing.assert_close(yf, yr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gxf, gxr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gpf, gpr, rtol=1e-12, atol=0)
    torch.testing.assert_close(gnf, gnr, rtol=1e-12, atol=0)
    for t in (yf, gxf, gpf, gnf):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("fn,nparam", [(xielu, 2), (xiprelu, 2)])
def test_gradcheck_float64_random(fn, nparam):
    torch.manual_seed(2)
    x = torch.randn(64, dtype=torch.float64) * 3
    x = x[(x.abs() > 1e-3) & ((x + 1e-6).abs() > 1e-3)].requires_grad_(True)
    ap = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    an = torch.tensor([-0.4], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(0.5, dtype=torch.float64)
    eps = torch.tensor(-1e-6, dtype=torch.float64)
    args = (x, ap, an, beta, eps) if fn is xielu else (x, ap, an, beta)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("fn", [xielu, xiprelu])
@pytest.mark.parametrize("value,step", [(1e-10, 1e-12), (-1e-10, 1e-12), (1e10, 1e3), (-1e10, 1e3),
                                        (0.5, 1e-6), (-0.5, 1e-6), (-20.0, 1e-6)])
def test_gradcheck_special_points(fn, value, step):
    """Finite differences inside each smooth piece: w.r.t. x with a step that stays on the
    piece, w.r.t. the parameters with the default step."""
    x = torch.full((3,), value, dtype=torch.float64, requires_grad=True)
    ap = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    an = torch.tensor([0.1], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(0.5, dtype=torch.float64)
    rest = (beta, torch.tensor(-1e-6, dtype=torch.float64)) if fn is xielu else (beta,)
    assert torch.autograd.gradcheck(lambda t: fn(t, ap.detach(), an.detach(), *rest), (x,),
                                    eps=step, atol=1e-6, rtol=1e-6)
    assert torch.autograd.gradcheck(lambda p, n: fn(x.detach(), p, n, *rest), (ap, an),
                                    atol=1e-6, rtol=1e-6)
    y = fn(x, ap, an, *rest)
    grads = torch.autograd.grad(y.sum(), (x, ap, an))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("fn", [xielu, xiprelu])
def test_params_gradcheck_at_zero_and_exact_grads_at_zero(fn):
    beta = torch.tensor(0.5, dtype=torch.float64)
    eps = torch.tensor(-1e-6, dtype=torch.float64)
    x = torch.tensor([0.0, 0.0, 1e-10, -1e-10], dtype=torch.float64)
    ap = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    an = torch.tensor([0.1], dtype=torch.float64, requires_grad=True)
    rest = (beta, eps) if fn is xielu else (beta,)
    assert torch.autograd.gradcheck(lambda p, n: fn(x, p, n, *rest), (ap, an))
    # d f/dx at exactly 0: the x <= 0 branch; for xIELU it is linear on (ε, 0] with slope β − αn,
    # for xIPReLU the slope is β.  Check the value and a one-sided finite difference.
    x0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(fn(x0, ap, an, *rest).sum(), x0)
    a_n = F.softplus(an.detach()) + (beta if fn is xielu else 0.0)
    expected = (beta - a_n) if fn is xielu else beta
    assert float(gx) == pytest.approx(float(expected), abs=1e-15)
    h = 1e-8
    with torch.no_grad():
        one_sided = (fn(x0, ap, an, *rest) - fn(x0 - h, ap, an, *rest)) / h
    assert float(one_sided) == pytest.approx(float(expected), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(x=st.lists(st.floats(-60, 60, allow_nan=False), min_size=1, max_size=16),
       ap=st.floats(-4, 4), an=st.floats(-4, 4), kind=st.sampled_from(["xielu", "xiprelu"]))
def test_fused_matches_reference_property(x, ap, an, kind):
    xt = torch.tensor(x, dtype=torch.float64)
    mods = [(XIELU if kind == "xielu" else XIPReLU)(fused=f).double() for f in (True, False)]
    for m in mods:
        with torch.no_grad():
            m.alpha_p.fill_(ap); m.alpha_n.fill_(an)
    g = torch.linspace(-1, 1, len(x), dtype=torch.float64)
    (y1, gx1, gp1, gn1), (y2, gx2, gp2, gn2) = (_grads(m, xt, g) for m in mods)
    for a, b in ((y1, y2), (gx1, gx2), (gp1, gp2), (gn1, gn2)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [XIELU, XIPReLU])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(cls, dtype):
    torch.manual_seed(3)
    m32, mh = cls(), cls()
    xh = (torch.randn(1000) * 3).to(dtype)
    g = torch.randn(1000).to(dtype)
    xh_ = xh.clone().requires_grad_(True)
    y = mh(xh_)
    assert y.dtype == dtype
    y.backward(g)
    assert mh.alpha_p.grad.dtype == torch.float32 and mh.alpha_n.grad.dtype == torch.float32
    assert xh_.grad.dtype == dtype
    # the same computation on the upcast values (all internal math is fp32)
    x32 = xh.float().requires_grad_(True)
    y32 = m32(x32)
    y32.backward(g.float())
    torch.testing.assert_close(y.float(), y32.to(dtype).float())
    torch.testing.assert_close(mh.alpha_p.grad, m32.alpha_p.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mh.alpha_n.grad, m32.alpha_n.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xh_.grad.float(), x32.grad.to(dtype).float())
    # the reference path agrees in half precision as well
    ref = cls(fused=False)
    torch.testing.assert_close(ref(xh), y.detach())


@pytest.mark.parametrize("cls", [XIELU, XIPReLU])
def test_state_dict_round_trip(cls):
    a = cls()
    with torch.no_grad():
        a.alpha_p.fill_(1.3); a.alpha_n.fill_(-0.7)
    b = cls(fused=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(100) * 3
    torch.testing.assert_close(a(x), b(x))
    assert torch.equal(b.alpha_p, a.alpha_p)


def test_inverse_softplus():
    for v in (1e-3, 0.3, 0.8, 5.0, 40.0):
        assert float(F.softplus(torch.tensor(inverse_softplus(v), dtype=torch.float64))) == pytest.approx(v, rel=1e-12)
    with pytest.raises(GrafsError):
        inverse_softplus(0.0)


@pytest.mark.parametrize("kwargs", [dict(alpha_p_init=0.0), dict(alpha_n_init=0.4),
                                    dict(eps=1e-3), dict(beta=float("nan")), dict(fused="yes"),
                                    dict(alpha_p_init="a")])
def test_bad_arguments_xielu(kwargs):
    with pytest.raises(GrafsError):
        XIELU(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(alpha_p_init=-1.0), dict(alpha_n_init=0.0),
                                    dict(beta=float("inf"))])
def test_bad_arguments_xiprelu(kwargs):
    with pytest.raises(GrafsError):
        XIPReLU(**kwargs)
    assert issubclass(GrafsError, ValueError)


def test_matches_transformers_if_installed():
    activations = pytest.importorskip("transformers.activations")
    hf = activations.XIELUActivation(dtype=torch.float32)
    ours = XIELU()
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k in ours.state_dict()})
    x = torch.randn(1000) * 3
    torch.testing.assert_close(ours(x), hf(x).to(x.dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours(x), XIELU(fused=False)(x), rtol=1e-6, atol=1e-6)
