"""A relaxed cell with k active ops evaluates only those ops (issue 12), for the lean cell and the
Triton cell (CPU: Triton's interpreter; with CUDA: the GPU), in both of the Triton cell's states:
kernels generated for a superset of the active ops (dropped ops behind a mask branch) and
kernels generated for exactly the active ops.

How it is checked: every dropped slot gets a NaN mixture weight, every γ that only dropped ops
read is NaN, and the input holds values at which the dropped ops overflow (exp, sinh, cube of
100 are inf in fp32; inf times a weight of 0 would be NaN too). If any dropped op or its weight
or γ entered the computation, the output or a gradient would be NaN; instead the values and the
gradients for x, the weights and γ must equal the reference interpreter's with clean weights
and γ, and the dropped slots' weight and γ gradients must be exactly 0."""
import pytest
import torch

from grafs.runtime.space import SearchSpace

pytestmark = pytest.mark.gpu    # runs on the GPU where there is one: `pytest -m gpu`
ON_GPU = torch.cuda.is_available()
DEV = "cuda" if ON_GPU else "cpu"
BAD_UNARY = ["exp", "cube", "sinh", "mul_gamma", "add_gamma"]
BAD_BINARY = ["mul", "mix"]


def _space():
    sp = SearchSpace("B(U(x), U(x))", unary=["identity", "gelu", "tanh", *BAD_UNARY],
                     binary=["add", "max", *BAD_BINARY])
    sp.clip = False           # unclipped: exp/sinh/cube overflow at x = 100
    return sp


def _cells(mode, recompile_ratio=None):
    """The reference and a ``mode`` cell with the same state, after one call with every op
    active (so the Triton cell has kernels for the full set), then with the bad ops dropped."""
    sp = _space()
    ref = sp.relax("eager", seed=0).to(DEV)
    cell = sp.relax(mode, seed=0).to(DEV)
    cell.load_state_dict(ref.state_dict())
    if recompile_ratio is not None:
        cell.recompile_ratio = recompile_ratio
    cell(torch.linspace(-2.0, 2.0, 16, device=DEV))
    active = ref.active.clone()
    for (h, op), k in ref.slot_of.items():
        active[k] = op not in BAD_UNARY + BAD_BINARY
    for c in (ref, cell):
        c.load_state_dict({**c.state_dict(), "active": active})
    return ref, cell


def _poisoned(cell, w):
    """NaN in every dropped slot's weight and every γ read only by dropped slots."""
    w_nan = torch.where(cell.active, w, torch.full_like(w, float("nan")))
    used = set()
    for (h, op), k in cell.slot_of.items():
        if cell.active[k]:
            used.update(cell.gamma_of[(h, op)])
    g_nan = cell.gamma.detach().clone()
    for j in range(g_nan.numel()):
        if j not in used:
            g_nan[j] = float("nan")
    return w_nan, g_nan, sorted(set(range(g_nan.numel())) - used)


def _check(mode, recompile_ratio=None):
    ref, cell = _cells(mode, recompile_ratio)
    assert cell.num_active() == 8
    assert not any(op in BAD_UNARY + BAD_BINARY for ops in cell.active_ops() for op in ops)
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 2.0, 100.0, -100.0, 30.0] * 5, device=DEV)
    gy = torch.linspace(-1.0, 1.0, x.numel(), device=DEV)
    w = ref.sample_weights().detach()
    w_nan, g_nan, dropped_g = _poisoned(cell, w)
    assert dropped_g, "the test needs γ entries that only dropped ops read"
    with torch.no_grad():
        cell.gamma.copy_(g_nan)
    outs = []
    for c, ww in ((cell, w_nan), (ref, w)):
        c.gamma.grad = None
        xi, wi = x.clone().requires_grad_(True), ww.clone().requires_grad_(True)
        y = c(xi, weights=wi)
        y.backward(gy)
        outs.append((y.detach(), xi.grad, wi.grad, c.gamma.grad))
    (y, gx, gw, gg), (yr, gxr, gwr, ggr) = outs
    assert torch.isfinite(yr).all()
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, gxr, rtol=1e-5, atol=1e-5)
    active = cell.active
    torch.testing.assert_close(gw[active], gwr[active], rtol=1e-5, atol=1e-4)
    assert torch.all(gw[~active] == 0)
    zeros = torch.zeros_like(cell.gamma)
    gg, ggr = (zeros if g is None else g for g in (gg, ggr))   # None: no γ read at all
    assert torch.all(gg[dropped_g] == 0), gg
    torch.testing.assert_close(gg, ggr, rtol=1e-5, atol=1e-4)
    return cell


def test_lean_cell_evaluates_only_active_ops():
    _check("lean")


@pytest.mark.parametrize("recompile_ratio,exact", [(0.3, False), (0.6, True)])
def test_triton_cell_evaluates_only_active_ops(monkeypatch, tmp_path, recompile_ratio, exact):
    """0.3: the kernels of the full op set stay (20 compiled, 8 active: a mask branch skips the
    dropped ones); 0.6: kernels regenerated for exactly the 8 active ops."""
    pytest.importorskip("triton", reason="the Triton cell needs the 'triton' extra")
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")      # read at call time by the backend
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path))
    cell = _check("triton", recompile_ratio)
    n_code = sum(len(k) for k in cell._generated_key["triton"])
    assert n_code == (cell.num_active() if exact else len(cell.slot_of))
