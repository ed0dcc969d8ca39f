"""PWLU (seeds/000): formula, ReLU init, two-phase realignment, inference path, channels."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grafs.activations.pwlu import PWLU, pwlu, pwlu_inference
from grafs.errors import GrafsError


def eq1_reference(x, bl, br, y, kl, kr):
    """seeds/000 Eq. 1-4 evaluated element by element in float64 (numpy)."""
    n = len(y) - 1
    d = (br - bl) / n
    out = np.empty_like(x)
    for k, v in enumerate(x):
        if v < bl:
            out[k] = (v - bl) * kl + y[0]
        elif v >= br:
            out[k] = (v - br) * kr + y[n]
        else:
            i = min(int(math.floor((v - bl) / d)), n - 1)
            out[k] = (v - (bl + i * d)) * ((y[i + 1] - y[i]) / d) + y[i]
    return out


def randomize(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        shape = m.left.shape
        m.left.copy_(-2.0 + 0.3 * torch.randn(shape, generator=g))
        m.right.copy_(1.5 + 0.3 * torch.rand(shape, generator=g))
        m.points.copy_(torch.randn(m.points.shape, generator=g))
        m.left_slope.copy_(torch.randn(shape, generator=g))
        m.right_slope.copy_(torch.randn(shape, generator=g))
    return m


def params64(m):
    return [p.detach().double() for p in (m.left, m.right, m.points, m.left_slope, m.right_slope)]


@pytest.mark.parametrize("n", [1, 3, 8, 16])
def test_matches_equation_1(n):
    m = randomize(PWLU(num_intervals=n, phase1_steps=0).double(), seed=n)
    bl, br, y, kl, kr = (p.numpy() for p in params64(m))
    grid = bl + (br - bl) * np.arange(n + 1) / n
    x = np.concatenate([np.random.default_rng(n).normal(size=500) * 3, grid, [-1e6, 1e6]])
    ref = eq1_reference(x, float(bl), float(br), y, float(kl), float(kr))
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(m.forward_train(xt).detach().numpy(), ref, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(m.forward_inference(xt).detach().numpy(), ref, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
@pytest.mark.parametrize("mode", ["layer", "channel"])
def test_equals_relu_after_init(n, mode):
    kw = dict(num_channels=4) if mode == "channel" else {}
    m = PWLU(num_intervals=n, mode=mode, **kw)
    x = torch.cat([torch.randn(2, 4, 50).flatten() * 4, torch.linspace(-10, 10, 1001)])[:4 * 250]
    x = x.reshape(5, 4, 50)
    relu = torch.relu(x)
    assert torch.equal(m(x), relu)                       # phase I, training mode
    torch.testing.assert_close(m.forward_train(x), relu, rtol=0, atol=1e-6)
    torch.testing.assert_close(m.forward_inference(x), relu, rtol=0, atol=1e-6)
    m.eval()
    torch.testing.assert_close(m(x), relu, rtol=0, atol=1e-6)
    m2 = PWLU(num_intervals=n, mode=mode, phase1_steps=0, **kw)   # fix-init: parameters are used at once
    torch.testing.assert_close(m2(x), relu, rtol=0, atol=1e-6)


def test_phase1_statistics_and_reset():
    torch.manual_seed(0)
    t1 = 5
    m = PWLU(num_intervals=8, phase1_steps=t1)
    mu, sd = 0.0, 1.0
    batches = [torch.randn(4000) * 2.0 + 0.7 for _ in range(t1 + 1)]
    for b in batches[:t1]:
        xb = b.clone().requires_grad_(True)
        y = m(xb)
        assert torch.equal(y, torch.relu(b))
        y.sum().backward()
        mu = 0.9 * mu + 0.1 * b.mean().item()
        sd = 0.9 * sd + 0.1 * b.std(correction=0).item()
        assert m.phase == 1
    # phase I: the PWLU parameters take no part, so no gradient reaches them
    assert all(p.grad is None for p in m.parameters())
    assert m.running_mean.item() == pytest.approx(mu, rel=1e-5)
    assert m.running_std.item() == pytest.approx(sd, rel=1e-5)
    y = m(batches[t1])                                       # first phase-II call: realigned
    assert m.phase == 2 and int(m.num_steps) == t1 + 1
    assert m.left.item() == pytest.approx(mu - 3 * sd, rel=1e-5)
    assert m.right.item() == pytest.approx(mu + 3 * sd, rel=1e-5)
    assert m.left_slope.item() == 0.0 and m.right_slope.item() == 1.0
    d = (m.right - m.left).item() / 8
    grid = m.left.item() + d * torch.arange(9, dtype=torch.float64)
    torch.testing.assert_close(m.points.detach().double(), torch.relu(grid), rtol=1e-6, atol=1e-6)
    # right after the reset: ReLU except on the one interval containing 0, where it is the
    # chord of ReLU (seeds/000: "there may be a tiny gap around zero"), gap ≤ d/4
    x = batches[t1]
    i0 = math.floor((0 - m.left.item()) / d)
    lo, hi = m.left.item() + i0 * d, m.left.item() + (i0 + 1) * d
    outside = (x < lo - 1e-4) | (x > hi + 1e-4)
    torch.testing.assert_close(y[outside], torch.relu(x[outside]), rtol=1e-6, atol=1e-5)
    inside = ~outside
    chord = hi * (x[inside] - lo) / d
    torch.testing.assert_close(y[inside], chord, rtol=1e-5, atol=1e-5)
    assert (y - torch.relu(x)).abs().max().item() <= d / 4 + 1e-5
    # and the parameters now train
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_equals_relu_right_after_reset_when_zero_is_a_grid_point():
    # zero-mean symmetric input and even N: 0 = B_{N/2}, the realigned PWLU is exactly ReLU
    base = torch.randn(3000, generator=torch.Generator().manual_seed(1)) * 1.5
    x = torch.cat([base, -base])
    m = PWLU(num_intervals=16, phase1_steps=3, mode="channel", num_channels=1, channel_dim=0)
    for _ in range(4):
        y = m(x.unsqueeze(0))
    assert m.phase == 2
    torch.testing.assert_close(y[0], torch.relu(x), rtol=0, atol=1e-5)


def _boundaries(m):
    n = m.num_intervals
    bl, br = m.left.detach().double(), m.right.detach().double()
    return [bl + (br - bl) * i / n for i in range(n + 1)]


@pytest.mark.parametrize("path", ["forward_train", "forward_inference"])
def test_continuous_at_every_boundary(path):
    m = randomize(PWLU(num_intervals=16, phase1_steps=0).double(), seed=4)
    f = getattr(m, path)
    for b in _boundaries(m):
        for off in (1e-6, 1e-9):
            left = f(b - off).item()
            right = f(b + off).item()
            mid = f(b).item()
            # the largest slope bounds how much the function may move over 2·off
            assert abs(right - left) < 100 * off + 1e-9, (b, off)
            assert abs(mid - left) < 100 * off + 1e-9


@pytest.mark.parametrize("mode", ["layer", "channel"])
def test_inference_path_equals_training_path_in_eval(mode):
    kw = dict(num_channels=3) if mode == "channel" else {}
    m = randomize(PWLU(num_intervals=16, mode=mode, phase1_steps=0, **kw), seed=7)
    x = torch.randn(8, 3, 33) * 4
    x[0, :, :17] = torch.stack(_boundaries(m)[:17]).float().reshape(-1, 1).T if mode == "layer" else x[0, :, :17]
    m.train()
    y_train = m(x)
    m.eval()
    y_eval = m(x)
    torch.testing.assert_close(y_eval, y_train, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pwlu_inference(x, *m.parameters(), channel_dim=m._cd()), y_train,
                               rtol=1e-5, atol=1e-5)
    m64 = m.double()
    x64 = x.double()
    torch.testing.assert_close(m64.forward_inference(x64), m64.forward_train(x64), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(x=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20),
       seed=st.integers(0, 1000), n=st.integers(1, 20))
def test_inference_equals_training_property(x, seed, n):
    m = randomize(PWLU(num_intervals=n, phase1_steps=0).double(), seed=seed)
    xt = torch.tensor(x, dtype=torch.float64)
    torch.testing.assert_close(m.forward_inference(xt), m.forward_train(xt), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["layer", "channel"])
def test_gradcheck_float64(mode):
    kw = dict(num_channels=2) if mode == "channel" else {}
    m = randomize(PWLU(num_intervals=6, mode=mode, phase1_steps=0, **kw).double(), seed=11)
    x = torch.randn(3, 2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    # keep the points away from the interval boundaries (the index is piecewise constant)
    for b in _boundaries(m):
        b = b.reshape(1, -1, 1) if mode == "channel" else b
        x = torch.where((x - b).abs() < 1e-3, x + 2e-3, x)
    x.requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    cd = 1 if mode == "channel" else None
    assert torch.autograd.gradcheck(lambda *a: pwlu(*a, channel_dim=cd), (x, *params))
    assert torch.autograd.gradcheck(lambda *a: pwlu_inference(*a, channel_dim=cd), (x, *params))


def test_gradients_follow_table_1():
    m = randomize(PWLU(num_intervals=4, phase1_steps=0).double(), seed=5)
    bl, br, y, kl, kr = params64(m)
    d = (br - bl) / 4
    for v, region in [(bl - 0.7, "left"), (br + 0.4, "right"), (bl + 2.3 * d, "inner")]:
        m.zero_grad()
        m.forward_train(torch.tensor([v.item()], dtype=torch.float64)).sum().backward()
        if region == "left":
            exp = dict(left=-kl, right=0.0, left_slope=v - bl, right_slope=0.0)
            assert m.points.grad[0].item() == pytest.approx(1.0)
        elif region == "right":
            exp = dict(left=0.0, right=-kr, left_slope=0.0, right_slope=v - br)
            assert m.points.grad[4].item() == pytest.approx(1.0)
        else:
            i = 2
            k = (y[i + 1] - y[i]) / d
            exp = dict(left=k * (v - br) / (br - bl), right=k * (bl - v) / (br - bl),
                       left_slope=0.0, right_slope=0.0)
            b_i = bl + i * d
            assert m.points.grad[i].item() == pytest.approx(((b_i + d - v) / d).item())
            assert m.points.grad[i + 1].item() == pytest.approx(((v - b_i) / d).item())
        for name, val in exp.items():
            assert getattr(m, name).grad.item() == pytest.approx(float(val), abs=1e-12), (region, name)


@pytest.mark.parametrize("shape,cd", [((4, 3, 7), 1), ((2, 3, 5, 6), 1), ((4, 7, 3), -1)])
def test_channel_wise(shape, cd):
    c = 3
    m = randomize(PWLU(num_intervals=8, mode="channel", num_channels=c, channel_dim=cd, phase1_steps=0), seed=2)
    x = torch.randn(shape) * 3
    y = m(x)
    assert y.shape == x.shape
    xm = x.movedim(cd, 0)
    ym = y.movedim(cd, 0)
    for ch in range(c):
        single = PWLU(num_intervals=8, phase1_steps=0)
        with torch.no_grad():
            for name in ("left", "right", "points", "left_slope", "right_slope"):
                getattr(single, name).copy_(getattr(m, name)[ch])
        torch.testing.assert_close(ym[ch], single(xm[ch]), rtol=1e-6, atol=1e-6)
    # per-channel statistics in phase I
    m2 = PWLU(num_intervals=8, mode="channel", num_channels=c, channel_dim=cd, phase1_steps=2)
    scale = torch.tensor([0.5, 1.0, 3.0]).reshape([-1 if i == (cd % len(shape)) else 1 for i in range(len(shape))])
    xs = x * scale
    m2(xs)
    expected = 0.1 * xs.movedim(cd, 0).reshape(c, -1).std(dim=1, correction=0) + 0.9
    torch.testing.assert_close(m2.running_std, expected)


def test_state_dict_round_trip_keeps_phase():
    m = PWLU(num_intervals=8, mode="channel", num_channels=2, phase1_steps=2)
    for _ in range(3):
        m(torch.randn(16, 2) * 2 + 1)
    randomize(m, seed=9)
    sd = m.state_dict()
    assert {"left", "right", "points", "left_slope", "right_slope", "running_mean", "running_std",
            "num_steps"} == set(sd)
    m2 = PWLU(num_intervals=8, mode="channel", num_channels=2, phase1_steps=2)
    assert m2.phase == 1
    m2.load_state_dict(sd)
    assert m2.phase == 2 and m2._realigned
    x = torch.randn(16, 2) * 3
    torch.testing.assert_close(m2(x), m(x))
    m.eval(); m2.eval()
    torch.testing.assert_close(m2(x), m(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    m = randomize(PWLU(num_intervals=8, phase1_steps=0), seed=3)
    x = (torch.randn(500) * 3).to(dtype).requires_grad_(True)
    y = m(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert m.points.grad.dtype == torch.float32 and x.grad.dtype == dtype
    ref = m.forward_train(x.detach().float())
    torch.testing.assert_close(y.float(), ref.to(dtype).float())
    m.eval()
    torch.testing.assert_close(m(x.detach()).float(), ref, rtol=1e-2, atol=1e-2)


def test_nan_and_inf_inputs():
    m = randomize(PWLU(num_intervals=4, phase1_steps=0), seed=1)
    y = m(torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0]))
    assert torch.isnan(y[0]) and not torch.isnan(y[3])


@pytest.mark.parametrize("kwargs", [dict(num_intervals=0), dict(num_intervals=2.5), dict(mode="pixel"),
                                    dict(mode="channel"), dict(mode="channel", num_channels=0),
                                    dict(num_channels=3), dict(phase1_steps=-1), dict(momentum=1.0),
                                    dict(init_bound=0.0), dict(channel_dim="x")])
def test_bad_arguments(kwargs):
    with pytest.raises(GrafsError):
        PWLU(**kwargs)


def test_wrong_channel_count_is_an_error():
    m = PWLU(mode="channel", num_channels=3, phase1_steps=0)
    with pytest.raises(GrafsError, match="channels"):
        m(torch.randn(2, 4, 5))
