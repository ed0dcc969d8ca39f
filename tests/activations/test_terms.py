"""The trainable families as grammar terms and as candidate search ops."""
import pytest
import torch
from torch import nn

import grafs
from grafs.activations import ANAct, DynActivation, PWLU, XIELU, XIPReLU
from grafs.errors import CompileError


@pytest.mark.parametrize("text,make", [
    ("xielu(x)", XIELU), ("xiprelu(x)", XIPReLU), ("pwlu(x)", PWLU),
    ("dyn(gelu(x))", lambda: DynActivation(nn.GELU())),
    ("anact(silu(x))", lambda: ANAct(nn.SiLU())),
])
def test_term_equals_module(text, make):
    torch.manual_seed(0)
    x = 2 * torch.randn(64, 16, dtype=torch.float64)
    act = grafs.compile(text, backend="eager").double()
    ref = make().double()
    for training in (True, False):
        act.train(training)
        ref.train(training)
        torch.testing.assert_close(act(x), ref(x))
    # state lives in the module and survives a state_dict round trip
    other = grafs.compile(text, backend="eager").double()
    other.load_state_dict(act.state_dict())
    act.eval(), other.eval()
    torch.testing.assert_close(other(x), act(x))


def test_dyn_starts_as_its_base_and_wraps_any_formula():
    x = torch.randn(100)
    f = "0.5*gelu(x) + 0.5*relu(x)"
    torch.testing.assert_close(grafs.compile(f"dyn({f})", backend="eager")(x),
                               grafs.compile(f, backend="eager")(x))


def test_anact_gets_the_symbolic_derivative():
    """anact(E) feeds dE/dx from the compiler; compare with ANAct computing δ' by autograd."""
    torch.manual_seed(1)
    x = torch.randn(4096, dtype=torch.float64)
    formula = "0.6601*gelu(silu(x)*gelu(x)) + 0.3399*x^2"
    inner = grafs.compile(formula, backend="eager").double()
    act = grafs.compile(f"anact({formula})", backend="eager").double()
    ref = ANAct(inner).double()
    torch.testing.assert_close(act(x), ref(x))
    torch.testing.assert_close(act.terms[next(iter(act.terms))].running_rho, ref.running_rho)


def test_terms_compile_with_inductor_fullgraph():
    x = torch.randn(256, requires_grad=True)
    act = grafs.compile("0.5*xielu(x) + 0.5*anact(silu(x))")  # inductor, fullgraph=True
    ref = grafs.compile("0.5*xielu(x) + 0.5*anact(silu(x))", backend="eager")
    ref.load_state_dict(act.state_dict())
    y = act(x)  # first call of each: same initial state, same batch statistics
    y.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    y_ref = ref(x)
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-5)
    assert all(p.grad is not None for p in act.terms.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_terms_half_precision(dtype):
    x = torch.randn(128, dtype=dtype)
    for text in ("xielu(x)", "xiprelu(x)", "dyn(silu(x))"):
        y = grafs.compile(text, backend="eager")(x)
        assert y.dtype == dtype and torch.isfinite(y).all()


def test_terms_print_parse_and_refuse_closed_forms():
    e = grafs.parse("0.5 xIELU(x) + 0.5 ANAct(SiLU(x))")
    assert str(e) == "0.5*xielu(x) + 0.5*anact(silu(x))"
    assert grafs.parse(str(e)) is e
    assert "xIELU" in e.latex()
    with pytest.raises(CompileError, match="no symbolic derivative"):
        e.derivative()
    with pytest.raises(CompileError, match="trainable"):
        grafs.to_python(e)
    with pytest.raises(CompileError, match="closed form"):
        e.to_sympy(elementary=True)


def test_families_as_search_candidates():
    sp = grafs.SearchSpace("B(U(x), U(x))", unary=["gelu", "xielu", "xiprelu", "pwlu", "dyn_silu", "anact_silu"],
                           binary=["add", "mix"])
    cell = sp.relax("eager", seed=0)
    assert len(cell.terms) == 2 * 5
    x = torch.randn(64, 8, requires_grad=True)
    cell(x).sum().backward()
    assert cell.terms["U0_xielu"].alpha_p.grad is not None
    arch = {id(p) for p in cell.arch_parameters()}
    assert not any(id(p) in arch for p in cell.terms.parameters())  # family params are weights
    with torch.no_grad():
        for a in cell.alpha[:2]:
            a.zero_()
        cell.alpha[0][4] = 1.0   # dyn_silu
        cell.alpha[1][1] = 1.0   # xielu
        cell.alpha[2].copy_(torch.tensor([1.0, 0.0]))  # B0: add
    cell.drop(cell.num_active() - 3)
    assert str(cell.discretize()) == "dyn(silu(x)) + xielu(x)"
    with pytest.raises(ValueError, match="eager"):
        sp.relax("fused")
