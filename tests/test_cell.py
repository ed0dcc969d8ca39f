"""The relaxed DrNAS cell: schedule, DropOps, sampling, clipping, fused path, discretization."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import grafs
from grafs.errors import GrafsError, SearchSpaceError
from grafs.ops import GRAFS_BINARY, GRAFS_UNARY
from grafs.runtime.schedule import shrink_schedule
from grafs.runtime.space import SearchSpace

# A reduced space for the compiled (fused) tests: compile time on 2 CPU cores grows with the
# cell; the full 110-op cell is exercised by the eager tests and by bench/cell.py.
SMALL_UNARY = ["identity", "square", "exp", "mul_gamma", "gelu", "sinh"]
SMALL_BINARY = ["add", "mul", "mix"]


def small_space():
    return SearchSpace("B(U(B(U(x), U(x))), U(x))", unary=SMALL_UNARY, binary=SMALL_BINARY)


# ---------------------------------------------------------------------------------- schedule
def test_schedule_matches_paper():
    s = shrink_schedule(110, 6, 50, 2)
    assert s[2] == 19 and s[3] == 11 and s[4] == 7
    assert sum(s.values()) == 104
    assert max(s) == 48 and min(s) == 2
    # the reference's own formula, transcribed
    ref = 2 - 1 + np.logspace(np.log10(1), np.log10(50 - 2), 110 - 6, base=10).astype(int)
    u, c = np.unique(ref, return_counts=True)
    assert s == dict(zip(u.tolist(), c.tolist()))


@pytest.mark.parametrize("n_ops,n_final,epochs,start", [(110, 6, 10, 2), (32, 2, 5, 1), (9, 3, 4, 2)])
def test_schedule_totals(n_ops, n_final, epochs, start):
    s = shrink_schedule(n_ops, n_final, epochs, start)
    assert sum(s.values()) == n_ops - n_final
    assert all(start <= e < epochs for e in s)


@pytest.mark.parametrize("args", [(110, 6, 50, 0), (110, 6, 50, 50), (5, 6, 10, 2), (110, 0, 50, 2)])
def test_schedule_rejects_bad_input(args):
    with pytest.raises(GrafsError):
        shrink_schedule(*args)


# ----------------------------------------------------------------------------- search space
def test_grafs_space_shape():
    sp = SearchSpace.grafs()
    assert sp.num_ops == 110
    assert [h.name for h in sp.holes] == ["U0", "U1", "B0", "U2", "U3", "B1"]
    assert [len(h.ops) for h in sp.holes] == [23, 23, 9, 23, 23, 9]
    assert len(GRAFS_UNARY) == 23 and len(GRAFS_BINARY) == 9


@pytest.mark.parametrize("template,unary,binary,match", [
    ("U(x", GRAFS_UNARY, GRAFS_BINARY, "expected"),
    ("B(U(x))", GRAFS_UNARY, GRAFS_BINARY, "takes 2"),
    ("gelu(x)", GRAFS_UNARY, GRAFS_BINARY, "no holes"),
    ("U(1)", GRAFS_UNARY, GRAFS_BINARY, "does not use"),
    ("U(x)", ["gelu", "gleu"], GRAFS_BINARY, "did you mean"),
    ("U(x)", ["add"], GRAFS_BINARY, "binary op"),
    ("U(x)", [], GRAFS_BINARY, "empty"),
])
def test_bad_templates(template, unary, binary, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace(template, unary=unary, binary=binary)


def test_custom_template_and_per_hole_ops():
    sp = SearchSpace("B(U(x), x) + 0.5*U(x)", unary=["relu", "gelu"], binary=["add", "max"],
                     ops={"U1": ["tanh"]})
    assert [h.ops for h in sp.holes] == [("relu", "gelu"), ("add", "max"), ("tanh",)]
    cell = sp.relax("eager", seed=0)
    x = torch.randn(100)
    y = cell(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(SearchSpaceError):
        SearchSpace("U(x)", ops={"U7": ["relu"]})


# ------------------------------------------------------------------------ sampling and drops
def test_dirichlet_only_over_active_ops():
    cell = SearchSpace.grafs().relax("eager", seed=0)
    cell.drop(40)
    torch.manual_seed(0)
    w = cell.sample_weights()
    assert torch.all(w[~cell.active] == 0)
    assert torch.all(w[cell.active] > 0)
    for h in cell.space.holes:
        slots = cell._slots(h)
        assert torch.isclose(w[slots].sum(), torch.tensor(1.0), atol=1e-6)
    # two calls draw independent samples
    assert not torch.equal(w, cell.sample_weights())
    # α gets gradients through the sample
    w.sum().backward()  # sums are constant 1 per hole: gradient ~0, but it must flow
    (cell.sample_weights() * torch.arange(110.0)).sum().backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in cell.alpha)


def test_dropops_picks_lowest_alpha_in_fullest_hole():
    cell = SearchSpace.grafs().relax("eager", seed=0)
    with torch.no_grad():
        for i, a in enumerate(cell.alpha):
            a.copy_(torch.arange(len(a), dtype=torch.float32) * (i + 1))
        cell.alpha[1][5] = -3.0   # lowest α of U1
        cell.alpha[3][7] = -9.0   # lowest α of U2
    dropped = cell.drop(3)
    # all unary holes tie at 23: first U0 (its lowest α is op 0), then U1 (op 5), then U2 (op 7)
    assert dropped == [("U0", GRAFS_UNARY[0]), ("U1", GRAFS_UNARY[5]), ("U2", GRAFS_UNARY[7])]
    assert cell.num_active() == 107
    # U3 is now the fullest (23): next drop comes from it
    assert cell.drop(1) == [("U3", GRAFS_UNARY[0])]


def test_drop_to_discrete_and_counts():
    cell = SearchSpace.grafs().relax("eager", seed=1)
    for e, k in sorted(shrink_schedule(110, 6, 50, 2).items()):
        cell.drop(k)
    assert cell.num_active() == 6 and cell.is_discrete()
    assert cell.drop(5) == []  # nothing left to drop
    assert all(len(ops) == 1 for ops in cell.active_ops())


# ------------------------------------------------------------------------------- clipping
REF_UNARY = {  # the reference's modules, transcribed, with ℓ = 10
    "identity": lambda x: x, "neg": lambda x: -x, "abs": torch.abs,
    "square": lambda x: torch.clamp(x, -math.sqrt(10), math.sqrt(10)) ** 2,
    "cube": lambda x: torch.clamp(x, -10 ** (1 / 3), 10 ** (1 / 3)) ** 3,
    "sqrt": lambda x: torch.sqrt(torch.clamp(x, min=1e-3)),
    "exp": lambda x: torch.exp(torch.clamp(x, max=math.log(10))),
    "sinh": lambda x: torch.sinh(torch.clamp(x, -math.asinh(10), math.asinh(10))),
    "tanh": torch.tanh, "asinh": torch.asinh, "atan": torch.atan, "relu": torch.relu,
    "min0": lambda x: -torch.relu(-x), "sigmoid": torch.sigmoid,
    "softplus": lambda x: torch.log1p(torch.exp(x)), "erf": torch.erf, "silu": F.silu,
    "gelu": F.gelu, "elu": F.elu, "leaky_relu": F.leaky_relu,
}


@pytest.mark.parametrize("op", [o for o in GRAFS_UNARY if o in REF_UNARY])
def test_unary_op_in_cell_matches_reference(op):
    cell = SearchSpace("U(x)", unary=[op]).relax("eager", seed=0)
    x = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    y = cell.double()(x)
    torch.testing.assert_close(y, REF_UNARY[op](x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["add_gamma", "mul_gamma", "gamma"])
def test_gamma_ops(op):
    cell = SearchSpace("U(x)", unary=[op]).relax("eager", seed=0).double()
    g = float(cell.gamma.detach()[0])
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    ref = {"add_gamma": x + g, "mul_gamma": g * x, "gamma": torch.full_like(x, g)}[op]
    torch.testing.assert_close(cell(x), ref)


def test_gamma_init_distribution():
    mix, normal = [], []
    for s in range(60):
        cell = SearchSpace.grafs().relax("eager", seed=s)
        for (hole, op), idx in cell.gamma_of.items():
            (mix if op == "mix" else normal).extend(cell.gamma.detach()[idx].tolist())
    assert len(mix) == 120 and all(v == 0 for v in mix)  # γ of mix starts at 0
    normal = torch.tensor(normal)  # 4 unary holes x (x+γ, γx, γ) ~ N(1, 0.25)
    assert len(normal) == 720
    assert abs(normal.mean() - 1.0) < 0.04 and abs(normal.std() - 0.25) < 0.03


REF_BINARY = {
    "add": lambda a, b, g: a + b, "sub": lambda a, b, g: a - b,
    "mul": lambda a, b, g: torch.clamp(a, -math.sqrt(10), math.sqrt(10)) * torch.clamp(b, -math.sqrt(10), math.sqrt(10)),
    "max": lambda a, b, g: torch.max(a, b), "min": lambda a, b, g: torch.min(a, b),
    "sigmul": lambda a, b, g: torch.sigmoid(a) * b,
    "mix": lambda a, b, g: torch.sigmoid(g) * a + (1 - torch.sigmoid(g)) * b,
    "left": lambda a, b, g: a, "right": lambda a, b, g: b,
}


@pytest.mark.parametrize("op", GRAFS_BINARY)
def test_binary_op_in_cell_matches_reference(op):
    sp = SearchSpace("B(U(x), U(x))", unary=["identity"], binary=[op], ops={"U1": ["sinh"]})
    cell = sp.relax("eager", seed=0).double()
    with torch.no_grad():
        cell.gamma.fill_(0.3)
    x = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    b = torch.sinh(torch.clamp(x, -math.asinh(10), math.asinh(10)))
    torch.testing.assert_close(cell(x), REF_BINARY[op](x, b, torch.tensor(0.3, dtype=torch.float64)))


def test_clipping_bounds_exploding_ops():
    cell = SearchSpace("U(x)", unary=["square", "cube", "exp", "sinh"]).relax("eager", seed=0)
    y = cell(torch.linspace(-1e4, 1e4, 1001))
    assert torch.isfinite(y).all() and y.abs().max() <= 10 + 1e-4
    unclipped = cell.forward_unclipped(torch.tensor([100.0]))
    assert unclipped.item() > 1e5


# -------------------------------------------------------------------------- fused vs eager
def _grads(cell, x, go, seed):
    torch.manual_seed(seed)
    for p in cell.parameters():
        p.grad = None
    xr = x.clone().requires_grad_()
    y = cell(xr)
    y.backward(go)
    # a discrete cell draws no sample (each is exactly 1), so α may get no gradient at all
    grad = lambda p: torch.zeros_like(p) if p.grad is None else p.grad.clone()  # noqa: E731
    return y.detach(), xr.grad, [grad(a) for a in cell.alpha], grad(cell.gamma)


def _assert_close_grads(a, b):
    y1, gx1, ga1, gg1 = a
    y2, gx2, ga2, gg2 = b
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx2, gx1, rtol=1e-5, atol=1e-5)
    for u, v in zip(ga1, ga2):  # sums over all elements: relative tolerance
        torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-5 * max(1.0, float(u.abs().max())))
    torch.testing.assert_close(gg2, gg1, rtol=1e-5, atol=1e-5 * max(1.0, float(gg1.abs().max())))


def test_fused_matches_eager_through_shrinking():
    sp = small_space()
    eager = sp.relax("eager", seed=0)
    fused = sp.relax("fused", seed=0)
    fused.load_state_dict(eager.state_dict())
    torch.manual_seed(0)
    x = 2 * torch.randn(3000)
    go = torch.randn_like(x)
    # 30 (compiled) -> 20 (reuses the 30-op code, dropped ops weigh 0) -> 6 (recompiled, exact)
    for stage in (30, 20, 6):
        for c in (eager, fused):
            c.drop(c.num_active() - stage)
        assert eager.active_ops() == fused.active_ops()
        _assert_close_grads(_grads(eager, x, go, seed=stage), _grads(fused, x, go, seed=stage))
    assert fused.is_discrete()


def test_fused_saves_at_most_twice_its_input():
    fused = small_space().relax("fused", seed=0)
    eager = small_space().relax("eager", seed=0)
    x = torch.randn(50_000, requires_grad=True)

    def saved(fn):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        return sum(seen.values())

    nbytes = x.numel() * 4
    assert saved(fused) <= 2 * nbytes
    assert saved(eager) > 10 * nbytes  # the reference keeps every intermediate


def test_fused_never_recompiles_when_alpha_or_gamma_change():
    import torch._dynamo.utils as du
    fused = small_space().relax("fused", seed=0)
    x = torch.randn(2000, requires_grad=True)
    fused(x).sum().backward()
    frames = du.counters["stats"]["unique_graphs"]
    outs = []
    for i in range(3):
        with torch.no_grad():
            for a in fused.alpha:
                a.add_(0.5 * torch.randn_like(a))
            fused.gamma.add_(0.1)
        torch.manual_seed(0)
        y = fused(x)
        y.sum().backward()
        outs.append(y.detach())
    assert du.counters["stats"]["unique_graphs"] == frames
    assert not torch.equal(outs[0], outs[1])
    # a batch of another size reuses the dynamic-shape code too
    fused(torch.randn(777, requires_grad=True)).sum().backward()
    assert du.counters["stats"]["unique_graphs"] == frames


def test_fused_reuses_code_until_enough_ops_are_dropped():
    fused = small_space().relax("fused", seed=0)
    x = torch.randn(500)
    fused(x)
    first = fused._compiled_key
    fused.drop(5)  # 30 -> 25 active: above 0.6 * 30, keep the compiled superset
    fused(x)
    assert fused._compiled_key == first
    fused.drop(8)  # 17 <= 18: compile exactly the active set
    fused(x)
    assert fused._compiled_key == fused.active_ops()


# --------------------------------------------------------------------------- discretization
def test_discretize_round_trip_full_space():
    sp = SearchSpace.grafs()
    for seed in range(4):
        cell = sp.relax("eager", seed=seed)
        with torch.no_grad():
            for a in cell.alpha:
                a.normal_()
            cell.gamma.add_(torch.randn_like(cell.gamma))
        cell.drop(104)
        expr = cell.discretize()
        x = torch.linspace(-3, 3, 601, dtype=torch.float64)
        with torch.no_grad():
            y_cell = cell.double().forward_unclipped(x)
            y_formula = grafs.compile(str(expr), backend="eager").double()(x)
        torch.testing.assert_close(y_formula, y_cell, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_discretize_prints_mix_as_sigmoid_numbers():
    sp = SearchSpace("B(U(x), U(x))", unary=["relu", "gelu"], binary=["mix", "add"],
                     ops={"U0": ["relu"], "U1": ["gelu"]})
    cell = sp.relax("eager", seed=0)
    with torch.no_grad():
        cell.alpha[2].copy_(torch.tensor([1.0, 0.0]))  # B0: mix wins over add
        cell.gamma.fill_(-0.0976)
    cell.drop(1)
    s = str(cell.discretize())
    sg = 1 / (1 + math.exp(-float(torch.tensor(-0.0976))))  # γ is an fp32 parameter
    assert s == f"{sg!r}*relu(x) + {1 - sg!r}*gelu(x)"
    assert grafs.parse(s) is cell.discretize()


def test_discretize_removes_identity_and_projections():
    sp = SearchSpace.grafs()
    cell = sp.relax("eager", seed=0)
    choice = {"U0": "gelu", "U1": "silu", "B0": "left", "U2": "identity", "U3": "relu", "B1": "add"}
    with torch.no_grad():
        for h, a in zip(sp.holes, cell.alpha):
            a.fill_(0.0)
            a[h.ops.index(choice[h.name])] = 1.0
    assert str(cell.discretize()) == "gelu(x) + relu(x)"


# ------------------------------------------------------------------------ device syncs (CUDA)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["lean", "eager", "triton"])
def test_cell_call_never_syncs_the_device(mode):
    """Sampling, forward and backward of a cell call (arch step: α and γ train) run under
    torch.cuda.set_sync_debug_mode("error"): any host-device synchronisation raises."""
    if mode == "triton":
        pytest.importorskip("triton")
    cell = SearchSpace.grafs().relax(mode, seed=0).cuda()
    cell.drop(40)
    x = torch.randn(64, 32, 40, device="cuda", requires_grad=True)
    cell(x).sum().backward()              # first call: builds plans, compiles kernels
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cell.refresh_samples(2)
        y = cell(x) + cell(x)
        y.sum().backward()
        cell.clear_samples()
    finally:
        torch.cuda.set_sync_debug_mode(prev)


def test_relax_defaults_to_the_cells_own_default_mode():
    """SearchSpace.relax() and RelaxedCell() build the same cell mode by default (relax's was
    'fused', an Inductor compile of minutes on a CPU)."""
    import inspect

    from grafs.runtime.cell import RelaxedCell
    default = inspect.signature(RelaxedCell).parameters["mode"].default
    assert inspect.signature(SearchSpace.relax).parameters["mode"].default == default == "auto"
