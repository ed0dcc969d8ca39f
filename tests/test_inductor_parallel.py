"""The inductor backend's kernels are built for large inputs (issue 30): the compiled formula is
traced on a small example whose symbolic size Inductor takes to be ``_SIZE_HINT``, so its CPU
kernels run on every intra-op thread (``#pragma omp parallel``) and its GPU kernels get blocks
for that size, while one forward and one backward compile still serve every shape. Structure
only: no timing is asserted (bench: ``python -m bench.formulas --threads 1 2``)."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

import grafs
from grafs.compiler import inductor_formula

TEXT = "{a=0.5} gelu(x) + {b=0.3} x^2"      # parameters: the backward has reductions too

needs_standalone = pytest.mark.skipif(inductor_formula._standalone() is None,
                                      reason="this torch has no standalone Inductor compile")


def call(act, shape, dtype=torch.float32, device="cpu"):
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    act(x).sum().backward()


def new_code(act, shape, **kw) -> list[str]:
    """The Inductor output code (one module per compiled graph) that a fwd+bwd call compiled or
    loaded from Inductor's cache; empty where the call reused the formula's artifacts."""
    return run_and_get_code(call, act, shape, **kw)[1]


@needs_standalone
@pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="torch built without OpenMP")
def test_cpu_kernels_are_parallel_and_compiled_once_per_dtype_and_thread_count():
    torch.set_num_threads(2)                    # conftest restores the suite's one thread
    act = grafs.compile(TEXT)
    code = new_code(act, 1000)                  # the first size: far below the hint
    assert len(code) == 2 and act._compiled.compiles == 2       # forward, backward
    for c in code:
        assert "#pragma omp parallel" in c, c
    for shape in [(3,), (7, 11), (1 << 16,), (2, 3, 5), ()]:    # every other shape: no compile
        assert new_code(act, shape) == []
    assert act._compiled.compiles == 2
    # float64: one more pair, parallel as well
    code = new_code(act, 50, dtype=torch.float64)
    assert len(code) == 2 and all("#pragma omp parallel" in c for c in code)
    new_code(act, (4, 4), dtype=torch.float64)
    assert act._compiled.compiles == 4
    # a kernel's thread count is fixed when it is compiled (serial at one thread): another
    # count compiles again, as torch.compile does; back to two threads reuses the first pair
    torch.set_num_threads(1)
    code = new_code(act, 1000)
    assert len(code) == 2 and not any("#pragma omp parallel" in c for c in code)
    assert act._compiled.compiles == 6
    torch.set_num_threads(2)
    assert new_code(act, 1000) == [] and act._compiled.compiles == 6


@needs_standalone
def test_trace_example_is_small_and_hinted_large():
    """The trace allocates TRACE_NUMEL elements, not the hint's size, and the hint is on the
    symbol Inductor sees (where torch supports hint overrides)."""
    x = inductor_formula._example(torch.float32, torch.device("cpu"))
    if x.numel() == inductor_formula._SIZE_HINT:
        pytest.skip("this torch has no hint override: the example is the hint's size")
    assert x.numel() == inductor_formula._TRACE_NUMEL
    assert x._dynamo_hint_overrides == {0: inductor_formula._SIZE_HINT}


@pytest.mark.gpu
@needs_standalone
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_forward_kernel_is_sized_for_the_hint():
    """The Triton forward kernel's size hint is _SIZE_HINT (with 16 its blocks were 16 wide)."""
    pytest.importorskip("triton")
    act = grafs.compile(TEXT).cuda()
    x = torch.randn(1000, device="cuda")
    with torch.no_grad():
        _, code = run_and_get_code(act, x)
    assert len(code) == 1 and act._compiled.compiles == 1
    assert str(inductor_formula._SIZE_HINT) in code[0], code[0]


@needs_standalone
def test_cpu_tail_is_a_scalar_loop_outside_the_vector_body():
    """With a symbolic size Inductor would put a masked vector tail in the main loop's body (a
    branch per vector), which GCC compiled 1.5-2x slower than the static kernel; the formula's
    kernels take the scalar tail loop instead, and every element, tail included, is right."""
    torch.set_num_threads(2)
    act = grafs.compile(TEXT)
    code = new_code(act, 1000)
    assert len(code) == 2
    for c in code:
        assert "_tail" in c, c                                  # the scalar tail loop
        assert "ks0 + (-16L)" not in c and "ks0 + (-8L)" not in c, c    # no masked tail loads
    # sizes around the vector width: the tail elements agree with a float64 reference
    for n in [1, 7, 15, 16, 17, 31, 33, 1000 + 13]:
        act.zero_grad()
        x = torch.linspace(-6, 6, n, dtype=torch.float64)
        a = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        xr = x.clone().requires_grad_()
        ref = a * torch.nn.functional.gelu(xr) + b * xr ** 2
        ref.sum().backward()
        x32 = x.float().requires_grad_()
        y = act(x32)
        y.sum().backward()
        torch.testing.assert_close(y.double(), ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x32.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
        (pa, pb) = sorted(act.named_parameters())
        torch.testing.assert_close(pa[1].grad.double(), a.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pb[1].grad.double(), b.grad, rtol=1e-4, atol=1e-4)
