"""grafs activations inside the user's ``torch.compile(model, fullgraph=True)``: every backend
traces as plain torch ops (no graph break; ``fullgraph=True`` raises on one), gives the values
and gradients of the uncompiled model, and Inductor fuses the activation into its neighbours'
kernels. Also: the eager and lean relaxed cells trace without graph breaks after a drop; and,
on a CUDA device, CUDA-graph capture of formula modules. Budget: one Inductor compile (~5-15 s
on a 2-core CPU), a few aot_eager traces."""
import re

import pytest
import torch
from torch import nn

import grafs
from grafs.runtime.space import SearchSpace

TEXT = "0.4756*relu(x) + 0.5244*gelu(x)"
PTEXT = "{a=0.4756}*relu(x) + 0.5244*gelu(x) + elu(x, {al=0.7})"


def model(text, backend, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), grafs.compile(text, backend=backend), nn.Linear(32, 4))


def grads(m, x):
    """Values, input and parameter gradients of ``m`` (compiled or not) at ``x``."""
    plain = getattr(m, "_orig_mod", m)
    plain.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    y = m(xi)
    y.backward(torch.linspace(-1, 1, y.numel(), device=y.device).reshape(y.shape))
    return y.detach(), xi.grad, {n: p.grad for n, p in plain.named_parameters()}


@pytest.mark.parametrize("backend", ["inductor", "eager", "triton"])
def test_whole_model_traces_without_graph_breaks(backend):
    m = model(PTEXT, backend)
    ref = model(PTEXT, "eager")
    x = torch.randn(8, 16)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)   # raises on a graph break
    y, gx, gp = grads(compiled, x)
    yr, gxr, gpr = grads(ref, x)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(gx, gxr)
    assert gp.keys() == gpr.keys() and "1.params.p_a" in gp
    for k in gp:
        torch.testing.assert_close(gp[k], gpr[k], msg=k)


def test_inductor_fuses_the_activation_with_its_neighbours():
    from torch._inductor.utils import run_and_get_code
    m = model(TEXT, "inductor")
    x = torch.randn(8, 16)
    with torch.no_grad():
        y, code = run_and_get_code(torch.compile(m, fullgraph=True), x)
        torch.testing.assert_close(y, model(TEXT, "eager")(x))
    src = "\n".join(code)
    # Linear -> activation -> Linear: two extern matmuls and ONE generated kernel, the whole
    # activation applied to the first matmul's output (no grafs call left in the graph)
    kernels = re.findall(r"= async_compile\.(?:cpp_pybinding|cpp|triton)\(", src)
    assert len(kernels) == 1, src
    assert "gelu" in src and "relu" in src and "grafs" not in src


@pytest.mark.parametrize("mode", ["eager", "lean"])
def test_relaxed_cell_traces_without_graph_breaks_after_drops(mode):
    """The program/plan of a new active set is built by drop(), not inside the trace (where
    grafs' Expr construction broke the graph: ``max(..., default=...)``, weak references)."""
    sp = SearchSpace("B(U(x), U(x))", unary=["relu", "gelu", "mul_gamma", "tanh"],
                     binary=["add", "mix", "mul"])
    cell = sp.relax(mode=mode, seed=0)
    x = torch.randn(64, 8)
    for drops in (0, 3):
        cell.drop(drops)
        torch._dynamo.reset()
        w = cell.sample_weights().detach()
        out = torch.compile(lambda x: cell(x, weights=w), backend="eager", fullgraph=True)(x)
        torch.testing.assert_close(out, cell(x, weights=w))


# -- CUDA graphs (GPU only) ------------------------------------------------------------------------
def _capture_fwd_bwd(act, x, gy):
    """Capture act(x).backward(gy) in a CUDA graph after a warm-up on a side stream (compiles)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            act.zero_grad(set_to_none=True)
            x.grad = None
            act(x).backward(gy)
    torch.cuda.current_stream().wait_stream(s)
    act.zero_grad(set_to_none=True)
    x.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = act(x)
        y.backward(gy)
    return g, y


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["inductor", "triton"])
def test_cuda_graph_capture_of_a_formula_module(backend):
    if backend == "triton":
        pytest.importorskip("triton", reason="the triton extra (grafs[triton])")
    act = grafs.compile(PTEXT, backend=backend).cuda()
    ref = grafs.compile(PTEXT, backend="eager").cuda()
    x = torch.randn(4096, device="cuda", requires_grad=True)
    gy = torch.randn(4096, device="cuda")
    graph, y = _capture_fwd_bwd(act, x, gy)
    for seed in (1, 2):                       # new inputs in place, then replay
        with torch.no_grad():
            gen = torch.Generator("cuda").manual_seed(seed)
            x.copy_(torch.randn(4096, device="cuda", generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        yr, gxr, gpr = grads(ref, x.detach())
        torch.testing.assert_close(y, yr)
        torch.testing.assert_close(x.grad, gxr)
        for name, p in act.named_parameters():
            torch.testing.assert_close(p.grad, gpr[name], msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_whole_model_reduce_overhead_cuda_graphs():
    m = model(PTEXT, "inductor").cuda()
    ref = model(PTEXT, "eager").cuda()
    compiled = torch.compile(m, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(8, 16, device="cuda")
    for _ in range(3):                          # record, then replay the CUDA graph
        y, gx, gp = grads(compiled, x)
    yr, gxr, gpr = grads(ref, x)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(gx, gxr)
    for k in gp:
        torch.testing.assert_close(gp[k], gpr[k], msg=k)
