"""The optional search ops outside the paper's space (``grafs.ops.EXTRA_UNARY``: sin, cos):
registry entries, ``SearchSpace.grafs(extra_unary=...)``, and every cell mode (eager
reference, lean, Triton under the interpreter) against torch.sin/torch.cos in float64."""
import math

import pytest
import torch

import grafs
from grafs.compiler.eager import run_expr
from grafs.errors import SearchSpaceError
from grafs.grammar.expr import as_expr, var
from grafs.ops import EXTRA_UNARY, GRAFS_BINARY, GRAFS_UNARY, SEARCH_OPS
from grafs.runtime.space import SearchSpace

X = torch.linspace(-40.0, 40.0, 2001, dtype=torch.float64)
REF = {"sin": torch.sin, "cos": torch.cos}


def test_extra_ops_are_registered_but_outside_the_paper_space():
    assert EXTRA_UNARY == ("sin", "cos")
    assert len(GRAFS_UNARY) == 23 and not set(EXTRA_UNARY) & set(GRAFS_UNARY)
    assert SearchSpace.grafs().num_ops == 110
    for name in EXTRA_UNARY:
        s = SEARCH_OPS[name]
        assert s.kind == "unary" and s.gammas == () and s.linear is None
        for ell in (10.0, None):     # bounded: the clipped and the unclipped op are the same
            e = as_expr(s.build([var()], [], ell))
            torch.testing.assert_close(run_expr(e, X), REF[name](X), rtol=1e-12, atol=1e-12)


def test_grafs_space_with_extra_unary():
    sp = SearchSpace.grafs(extra_unary=EXTRA_UNARY)
    assert sp.num_ops == 4 * 25 + 2 * 9 == 118
    for h in sp.holes:
        assert h.ops == (GRAFS_UNARY + EXTRA_UNARY if h.kind == "unary" else GRAFS_BINARY)
    assert SearchSpace.grafs(extra_unary="sin").num_ops == 114
    assert SearchSpace.grafs(extra_unary=["cos"], clip=False).clip is False
    with pytest.raises(SearchSpaceError, match="sinus"):
        SearchSpace.grafs(extra_unary=["sinus"])
    with pytest.raises(SearchSpaceError, match="duplicate"):
        SearchSpace.grafs(extra_unary=["relu"])
    with pytest.raises(SearchSpaceError, match="binary"):
        SearchSpace.grafs(extra_unary=["add"])


@pytest.mark.parametrize("name", EXTRA_UNARY)
def test_reference_cell_evaluates_the_op(name):
    cell = SearchSpace("U(x)", unary=[name]).relax("eager", seed=0).double()
    torch.testing.assert_close(cell(X), REF[name](X), rtol=1e-12, atol=1e-12)


def _space():
    # sin/cos in every unary hole, beside a few paper ops (shared and γ ops, affine ops)
    return SearchSpace("B(U(B(U(x), U(x))), U(x))",
                       unary=["identity", "relu", "mul_gamma", "tanh", "sin", "cos"],
                       binary=["add", "mul", "mix"])


def _call(cell, x, w, gout):
    x = x.detach().to(cell.gamma.dtype).clone().requires_grad_()
    w = w.detach().to(cell.gamma.dtype).clone().requires_grad_()
    cell.zero_grad(set_to_none=True)
    y = cell(x, weights=w)
    y.backward(gout.to(y.dtype))
    gg = cell.gamma.grad if cell.gamma.grad is not None else torch.zeros_like(cell.gamma)
    return [y.detach().double(), x.grad.double(), w.grad.double(), gg.double()]


def _assert_matches_float64(mode, x, gout, stages, **env):
    ref = _space().relax("eager", seed=0)
    with torch.no_grad():
        for a in ref.alpha:
            a.normal_(generator=torch.Generator().manual_seed(1))
        ref.gamma.add_(0.3)
    cell = _space().relax(mode, seed=0)
    cell.load_state_dict(ref.state_dict())
    ref = ref.double()
    for stage in stages:
        for c in (cell, ref):
            c.drop(c.num_active() - stage)
        assert cell.active_ops() == ref.active_ops()
        torch.manual_seed(stage)
        w = ref.sample_weights().detach()
        got, want = _call(cell, x.float(), w.float(), gout.float()), _call(ref, x, w, gout)
        for what, a, b in zip(("y", "dx", "dw", "dgamma"), got, want):
            tol = 2e-5 * (1.0 + float(b.abs().max()))
            assert float((a - b).abs().max()) <= tol, (mode, stage, what)


def _inputs(n=3000):
    g = torch.Generator().manual_seed(0)
    return 4 * torch.randn(n, generator=g, dtype=torch.float64), \
        torch.randn(n, generator=g, dtype=torch.float64)


def test_lean_cell_with_sin_cos_matches_float64_reference():
    x, gout = _inputs()
    _assert_matches_float64("lean", x, gout, [30, 16, 8, 4])


@pytest.mark.gpu
def test_triton_cell_with_sin_cos_matches_float64_reference(monkeypatch, tmp_path):
    pytest.importorskip("triton", reason="the Triton cell needs the 'triton' extra")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")   # read at call time by the backend
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path))
    x, gout = _inputs(300)                            # the interpreter runs every tl op in Python
    _assert_matches_float64("triton", x, gout, [30, 8])


def test_discretized_periodic_cell_round_trips():
    sp = SearchSpace("B(U(x), U(x))", unary=["sin", "cos", "mul_gamma"], binary=["add", "mul"])
    cell = sp.relax("eager", seed=0)
    with torch.no_grad():
        cell.alpha[0].copy_(torch.tensor([5.0, 0.0, 0.0]))   # U0: sin
        cell.alpha[1].copy_(torch.tensor([0.0, 5.0, 0.0]))   # U1: cos
        cell.alpha[2].copy_(torch.tensor([0.0, 5.0]))        # B0: mul
    cell.drop(sp.num_ops - 3)
    text = str(cell.discretize())
    y = grafs.compile(text, backend="eager").double()(X)
    torch.testing.assert_close(y, torch.sin(X) * torch.cos(X), rtol=1e-12, atol=1e-12)
    assert math.isclose(float(run_expr(grafs.parse(text), torch.tensor(0.5, dtype=torch.float64))),
                        math.sin(0.5) * math.cos(0.5), rel_tol=1e-12)
