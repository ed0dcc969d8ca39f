"""The C cell (grafs.compiler.cell.c_kernels, built by c_build; mode "c", ``auto`` on x86-64
Linux CPUs) against the reference interpreter, with the tolerances of tests/test_cell_lean.py (anchored on a float64
reference):

* outputs and gradients (x, w, γ) agree through every drop stage, for sizes with a vector tail,
  for a call split over threads, for the GRAFS cell with clipping-scale inputs, a custom
  template with per-hole overrides, and the optional sin/cos ops;
* a weight call (α, γ frozen: the kernel skips the reductions) gives the same ∂x;
* a call saves only x (plus the small vectors) and dispatches no host sync, a constant handful
  of ATen ops whatever the number of active ops;
* libraries are cached by source hash; a failing compiler is a clear CompileError; where the C
  cell cannot run, ``auto`` takes the lean path.
"""
from __future__ import annotations

import pytest
import torch

import grafs.compiler.cell.c_build as c_cell
import grafs.compiler.cell.c_kernels as c_kernels
from grafs.compiler.cell.c_emit import ISAS
from grafs.searching.loop import search
from grafs.errors import CompileError
from grafs.runtime.space import SearchSpace
from tests.test_cell_lean import (_CountOps, _assert_agree, _call, _drop_to, _inputs, _randomize,
                                  _weights, saved_bytes, sweep_stages)

pytestmark = pytest.mark.skipif(not c_cell.available(),
                                reason=f"the C cell cannot run here: {c_cell.unavailable_reason()}")


def _cells(space, seed=0):
    """C (fp32), eager (fp32) and eager (float64) cells with the same α, γ and mask."""
    ref = space.relax("eager", seed=seed)
    _randomize(ref, seed)
    c = space.relax("c", seed=seed + 1)
    c.load_state_dict(ref.state_dict())
    ref64 = space.relax("eager", seed=seed + 2)
    ref64.load_state_dict(ref.state_dict())
    return c, ref, ref64.double()


def _compare(cells, x, w, gout, what):
    c, ref, ref64 = cells
    got, y = _call(c, x, w, gout)
    want, _ = _call(ref, x, w, gout)
    exact, _ = _call(ref64, x, w, gout)
    assert got["y"].dtype == x.dtype and got["x"].dtype == x.dtype
    _assert_agree(got, want, exact, what)
    return got


@pytest.mark.parametrize("n,shape", [(37, (37,)), (1001, (7, 11, 13))])
def test_c_matches_eager_across_drops(n, shape):
    cells = _cells(SearchSpace.grafs(), seed=3)
    for stage in (110, 80, 54, 24, 12, 6):
        _drop_to(cells, stage)
        x = _inputs(n, seed=stage, shape=shape)
        w = _weights(cells[1], seed=stage)
        gout = torch.randn(shape, generator=torch.Generator().manual_seed(stage))
        got = _compare(cells, x, w, gout, f"{stage} ops, n={n}")
        assert (got["w"][~cells[0].active] == 0).all()     # dropped slots: no gradient


@pytest.mark.parametrize("isa", list(c_cell.CPU_FLAGS))
def test_every_instruction_set_matches_eager_across_drops(isa, monkeypatch):
    """The widest instruction set is the default (AVX-512 where the CPU has it): every one the
    CPU runs, chosen with $GRAFS_C_ISA, builds its own library (16, 8 or 4 lanes) and agrees
    with the references, with a vector tail (inf/NaN inputs: the native set's bit-for-bit tests
    below)."""
    if isa not in c_cell.supported_isas():
        pytest.skip(f"this CPU does not run {isa}")
    monkeypatch.setenv(c_cell.ISA_ENV, isa)
    assert c_cell.native_isa() == isa
    cells = _cells(SearchSpace.grafs(), seed=7)
    for stage in (110, 24, 6):
        _drop_to(cells, stage)
        x = _inputs(1001, seed=stage)
        w = _weights(cells[1], seed=stage)
        gout = torch.randn(1001, generator=torch.Generator().manual_seed(stage))
        _compare(cells, x, w, gout, f"{isa}, {stage} ops")
    assert f"typedef float V __attribute__((vector_size({4 * ISAS[isa]['lanes']})))" \
        in cells[0]._new_c_cell(cells[0].active_ops())._k.source


def test_a_cell_builds_for_the_instruction_set_it_was_written_for(monkeypatch):
    """The source and its build flags come from one reading of native_isa(): a change of
    $GRAFS_C_ISA between a cell's construction and its (background) build does not compile
    16-lane code with AVX2 flags (which compiled, and called libmvec with the wrong registers:
    values off by 1e32); a source built with another set's flags fails to compile."""
    from grafs.compiler.cell.c_emit import prelude
    isas = c_cell.supported_isas()
    if len(isas) < 2:
        pytest.skip("this CPU runs one instruction set")
    monkeypatch.delenv(c_cell.ISA_ENV, raising=False)
    cells = _cells(SearchSpace.grafs(), seed=8)
    _drop_to(cells, 54)
    cells[0]._new_c_cell(cells[0].active_ops())      # written for isas[0]
    monkeypatch.setenv(c_cell.ISA_ENV, isas[1])     # then the build reads another
    x, w = _inputs(999, seed=2), _weights(cells[1], seed=2)
    _compare(cells, x, w, torch.randn(999), f"written for {isas[0]}, {isas[1]} set before the build")
    with pytest.raises(CompileError, match=f"this C cell source is for {isas[0]}"):
        c_cell.build_library(prelude(isas[0]) + "int grafs_isa_guard_test(void) { return L; }\n",
                             isas[1])


def test_native_isa_names_a_bad_choice(monkeypatch):
    monkeypatch.setenv(c_cell.ISA_ENV, "avx1024")
    assert c_cell.native_isa() is None
    c_cell.unavailable_reason.cache_clear()
    try:
        why = c_cell.unavailable_reason()
        assert "GRAFS_C_ISA='avx1024'" in why and "accepted: avx512, avx2, sse4" in why, why
    finally:
        monkeypatch.delenv(c_cell.ISA_ENV)
        c_cell.unavailable_reason.cache_clear()
    assert c_cell.unavailable_reason() is None
    # set after the (cached) availability check: the cell says so, not a silent fall-back
    monkeypatch.setenv(c_cell.ISA_ENV, "avx1024")
    with pytest.raises(CompileError, match="GRAFS_C_ISA='avx1024' is not an instruction set"):
        SearchSpace.grafs().relax("c", seed=0)(torch.randn(10))
    with pytest.raises(CompileError, match="GRAFS_C_ISA='avx1024'"):      # (was: an SSE4 build)
        c_cell.build_library("int grafs_unused_isa_test_symbol(void) { return 1; }\n")
    # the names in any case
    monkeypatch.setenv(c_cell.ISA_ENV, " SSE4 ")
    assert c_cell.native_isa() == "sse4"


def test_native_isa_is_the_widest_this_compiler_builds(monkeypatch):
    """A compiler that cannot build the AVX-512 prelude (GCC < 12 has no
    __builtin_shufflevector) gets AVX2, not a C cell that is off."""
    isas = c_cell.supported_isas()
    if len(isas) < 2:
        pytest.skip("this CPU runs one instruction set")
    monkeypatch.delenv(c_cell.ISA_ENV, raising=False)
    assert c_cell.native_isa() == isas[0]
    monkeypatch.setattr(c_cell, "_probe_error",
                        lambda isa: "no __builtin_shufflevector" if isa == isas[0] else None)
    assert c_cell.native_isa() == isas[1]


def test_c_split_over_threads_matches_one_thread(monkeypatch):
    monkeypatch.setattr(c_cell, "PARALLEL_MIN", 256)
    monkeypatch.setattr(c_cell, "PARALLEL_WORK", 256)
    cells = _cells(SearchSpace.grafs(), seed=5)
    _drop_to(cells, 54)
    n = 4099                                     # 4 threads' spans and a vector tail
    x, w, gout = _inputs(n, seed=1), _weights(cells[1], seed=1), torch.randn(n)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert len(c_cell.spans(n, 54)) == 4
        split = _compare(cells, x, w, gout, "4 threads")
        torch.set_num_threads(1)
        one = _compare(cells, x, w, gout, "1 thread")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(split["y"], one["y"]) and torch.equal(split["x"], one["x"])
    torch.testing.assert_close(split["w"], one["w"], rtol=1e-5, atol=1e-5)


def test_c_matches_eager_custom_template_and_extra_ops():
    space = SearchSpace("B(U(x), x) + 0.5*U(x)",
                        unary=["identity", "gelu", "mul_gamma", "square", "exp", "gamma", "sin"],
                        binary=["add", "mul", "mix", "sigmul", "right", "min"],
                        ops={"U1": ["tanh", "add_gamma", "neg", "sinh", "sqrt", "cos"]})
    # _compare asserts outputs and ∂x, ∂w, ∂γ against the fp32 and float64 references
    assert sweep_stages(_cells(space, seed=11), (19, 12, 8, 5, 3), _compare) == 10


def _weight_call(cell, x, w, gout):
    """A weight step's call: α, γ and the weights frozen; the output and ∂x."""
    dt = cell.gamma.dtype
    x = x.detach().to(dt).clone().requires_grad_()
    cell.requires_grad_(False)
    try:
        y = cell(x, weights=w.detach().to(dt))
        y.backward(gout.to(dt))
    finally:
        cell.requires_grad_(True)
    return {"y": y.detach(), "x": x.grad}


def test_weight_call_is_one_pass_with_the_forward_bits(monkeypatch):
    """A weight call (α, γ frozen) runs one kernel, y and ∂y/∂x together, and its backward
    multiplies: y is the forward's and ∂x the two-kernel path's bit for bit (so a call may
    take either), as close to the float64 reference as the fp32 reference interpreter's,
    through the drops, inf/NaN inputs included."""
    cells = _cells(SearchSpace.grafs(), seed=4)
    calls = []
    for name in ("forward", "forward_dx", "backward"):
        real = getattr(c_kernels.CCellKernels, name)
        monkeypatch.setattr(c_kernels.CCellKernels, name,
                            lambda self, *a, _r=real, _n=name, **k: calls.append(_n) or _r(self, *a, **k))
    for stage in (110, 54, 24, 6):
        _drop_to(cells, stage)
        x = _inputs(1001, seed=stage)
        w = _weights(cells[1], seed=stage)
        gout = torch.randn(x.shape, generator=torch.Generator().manual_seed(stage))
        _weight_call(cells[0], x, w, gout)          # builds this set
        calls.clear()
        got = _weight_call(cells[0], x, w, gout)
        assert calls == ["forward_dx"], calls
        _assert_agree(got, _weight_call(cells[1], x, w, gout), _weight_call(cells[2], x, w, gout),
                      f"weight call, {stage} ops")
        with torch.no_grad():
            plain = cells[0](x, weights=w)
        assert torch.equal(_bits(got["y"]), _bits(plain)), stage
        arch, _ = _call(cells[0], x, w, gout)       # an arch call: forward, then backward with WG
        assert torch.equal(_bits(arch["y"]), _bits(got["y"]))
        # the adjoints start from 1 and meet gy last in both: the same ∂x to the bit
        assert torch.equal(_bits(got["x"]), _bits(arch["x"])), stage
    x = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 88.8, -90.0, 3.0])
    w = _weights(cells[1], seed=9)
    got = _weight_call(cells[0], x, w, torch.ones(8))
    with torch.no_grad():
        plain = cells[0](x, weights=w)
    assert torch.equal(_bits(got["y"]), _bits(plain))


def test_c_call_saves_x_only_and_never_syncs():
    cell = SearchSpace.grafs().relax("c", seed=0)
    _randomize(cell, 0)
    x = _inputs(300_001, seed=0).requires_grad_()
    in_bytes = x.numel() * 4
    for stage in (110, 24, 6):
        cell.drop(cell.num_active() - stage)
        cell(x).sum().backward()                  # warm: builds the library for this set
        sb = saved_bytes(cell, x)
        assert in_bytes <= sb <= in_bytes + 65536, (stage, sb / in_bytes)
        with _CountOps() as c:
            y = cell(x)
            y.backward(torch.ones_like(y))
        assert c.syncs == 0, (stage, c.ops)
        # sampling + one kernel call each way + the partial-sum bookkeeping: no per-op cost
        assert c.total <= 90, (stage, c.total, c.ops)


def test_libraries_are_cached_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(c_cell, "_LIBS", {})
    space = SearchSpace("U(x)", unary=["gelu", "tanh"], binary=["add"])
    cell = space.relax("c", seed=0)
    cell(torch.randn(10))
    libs = sorted((tmp_path / "c").glob("*.so"))      # the cell's and its one-pass kernel's
    assert len(libs) == 2 and not list((tmp_path / "c").glob("*.c"))
    stamps = [p.stat().st_mtime_ns for p in libs]
    monkeypatch.setattr(c_cell, "_LIBS", {})
    again = space.relax("c", seed=1)
    again(torch.randn(10))
    assert sorted((tmp_path / "c").glob("*.so")) == libs
    assert [p.stat().st_mtime_ns for p in libs] == stamps


def test_failing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    monkeypatch.setattr(c_cell, "_LIBS", {})
    with pytest.raises(CompileError, match="building the C cell failed"):
        c_cell.build_library("int grafs_unused_symbol_for_the_test(void) { return 1; }\n")
    assert not list((tmp_path / "c").glob("*"))          # nothing half-written is left


def test_a_libmvec_without_a_function_the_cell_may_call_fails_the_probe(tmp_path, monkeypatch):
    """glibc before 2.35 has only exp, log, sin, cos and pow in libmvec: such a libmvec fails
    the probe (``auto`` then takes the lean path) instead of the first cell build that calls
    erf or atan (a search aborted there before: the old probe called only exp, log and pow)."""
    import subprocess
    from grafs.compiler.cell.c_emit import LIBMVEC_UNARY
    isa = c_cell.native_isa()
    pre = ISAS[isa]["prefix"]
    old = {"exp", "log", "sin", "cos"}
    fake = "".join(f"void {pre}v_{f}f(void) {{}}\n" for f in sorted(old)) + f"void {pre}vv_powf(void) {{}}\n"
    (tmp_path / "fake.c").write_text(fake)
    subprocess.run([c_cell._compiler(), "-shared", "-fPIC", "-o", str(tmp_path / "libmvec.so"),
                    str(tmp_path / "fake.c")], check=True)
    # glibc's libm.so is a linker script that brings the real libmvec along: one without it
    libm = subprocess.run([c_cell._compiler(), "-print-file-name=libm.so.6"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "libm.so").write_text(f"GROUP ( {libm} )\n")
    cc = tmp_path / "cc"        # the compiler, linking against the fake libmvec first
    cc.write_text(f'#!/bin/sh\nexec {c_cell._compiler()} -L{tmp_path} "$@"\n')
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(c_cell, "_LIBS", {})
    c_cell._probe_error.cache_clear()
    try:
        why = c_cell._probe_error(isa)
    finally:
        c_cell._probe_error.cache_clear()
    missing = sorted(set(LIBMVEC_UNARY) - old)
    assert why is not None and "building the C cell failed" in why
    assert any(f"undefined reference to `{pre}v_{f}f'" in why for f in missing), why
    assert "glibc 2.35 or newer" in why


def test_auto_is_c_on_cpu_and_lean_where_c_cannot_run(monkeypatch):
    import grafs.runtime.cell as cell_mod
    cpu = torch.device("cpu")
    cell = SearchSpace.grafs().relax("auto", seed=0)
    assert cell.mode_for(cpu, 500) == "c" and cell.mode_for(cpu, 10**7) == "c"
    # trainable-family ops have no C template: lean, whatever the machine
    fam = SearchSpace.grafs(extra_unary=["pwlu"]).relax("auto", seed=0)
    assert fam.mode_for(cpu, 500) == "lean"
    monkeypatch.setattr(cell_mod, "_has_c", lambda: False)
    assert cell.mode_for(cpu, 10**7) == "lean"


@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse4"])
def test_prelude_math_matches_float64(isa):
    """The prelude's own functions (inline exp, tanh and asinh; exp/expm1/cosh/sinh that keep
    lanes beyond ±80 off libmvec's slow scalar path) match float64 within libmvec's accuracy
    (4 ulp) from -300 to 300 and over 60 decades, including inf, NaN, the branch points, the
    overflow edges, underflow to 0 and the sign of zero."""
    import ctypes
    from grafs.compiler.cell.c_emit import prelude
    if isa not in c_cell.supported_isas():
        pytest.skip(f"this CPU does not run {isa}")
    lib = c_cell.build_library(prelude(isa) + """
void t(const float *X, float *Y, long n, int w) {
    for (long i = 0; i < n; i += L) {
        V x = load(X + i, n - i);
        store(Y + i, w == 0 ? vexp(x) : w == 1 ? vexpm1(x) : w == 2 ? vcosh(x) : w == 3 ? vsinh(x)
                     : w == 4 ? vtanh(x) : vasinh(x), n - i);
    }
}
""", isa)
    lib.t.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
    edges = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, 80.0, 80.01, -80.01,
             88.72, 88.73, 89.41, 89.42, -87.3, -103.0, -104.0, 170.0, 171.0, -171.0]
    x = torch.cat([torch.linspace(-300, 300, 30001), torch.tensor(edges)])
    x = torch.cat([x, torch.logspace(-30, 30, 601), -torch.logspace(-30, 30, 601),
                   torch.tensor([0.625, 0.62499, 0.5, 0.49999, 1500.0, 1500.1, 3e38, -3e38])])
    for w, f in enumerate([torch.exp, torch.expm1, torch.cosh, torch.sinh, torch.tanh, torch.asinh]):
        y = torch.empty_like(x)
        lib.t(x.data_ptr(), y.data_ptr(), x.numel(), w)
        want = f(x.double()).float()
        close = (y - want).abs() <= 5e-7 * want.abs() + 1e-44
        ok = (torch.isfinite(want) & close) | (y == want) | (torch.isnan(y) & torch.isnan(want))
        assert ok.all(), (f.__name__, x[~ok][:5].tolist(), y[~ok][:5].tolist(), want[~ok][:5].tolist())
        signed = ~torch.isnan(want)                           # tanh(-0) = -0, asinh(-1e-30) < 0
        assert (torch.signbit(y[signed]) == torch.signbit(want[signed])).all(), f.__name__


def test_sigmoid_of_a_negated_input_keeps_its_tail():
    """σ(−u) is written as 1 − σ(u) only inside partials: a value keeps full precision."""
    space = SearchSpace("U(-x)", unary=["sigmoid", "silu"], binary=["add"])
    for op in ("sigmoid", "silu"):
        cell = space.relax("c", seed=0)
        cell.drop(1) if op == "silu" else None
        with torch.no_grad():
            cell.alpha[0].copy_(torch.tensor([5.0, -5.0] if op == "sigmoid" else [-5.0, 5.0]))
        cell.drop(1) if op == "sigmoid" else None
        assert cell.active_ops()[0] == (op,)
        x = torch.tensor([10.0, 17.0, 20.0, -3.0])
        want = getattr(torch, op, None)(-x.double()) if op == "sigmoid" else \
            torch.nn.functional.silu(-x.double())
        torch.testing.assert_close(cell(x).double(), want, rtol=1e-6, atol=0)


def test_default_dtype_float64_and_interrupts_do_not_corrupt_outputs():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cells = _cells(SearchSpace.grafs(), seed=2)
        _drop_to(cells, 24)
        x = _inputs(99, seed=4)
        _compare(cells, x, _weights(cells[1], seed=4), torch.randn(99, dtype=torch.float32),
                 "default dtype float64")
    finally:
        torch.set_default_dtype(old)


def test_second_derivatives_raise_and_torch_func_takes_lean():
    cell = SearchSpace.grafs().relax("auto", seed=0)
    x = torch.randn(50, requires_grad=True)
    g, = torch.autograd.grad(cell(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(g.sum(), x)
    # torch.func transforms get the lean path, whose torch ops they can differentiate
    w = cell.sample_weights().detach()
    jac = torch.func.jacrev(lambda t: cell(t, weights=w))(x[:5].detach())
    assert jac.shape == (5, 5) and torch.isfinite(jac).all()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def test_a_build_serves_subsets_of_its_active_set_bit_for_bit():
    """The build for a large active set, called with a smaller mask, computes what the build
    for exactly the smaller set computes, to the bit (forward, ∂x, ∂w, ∂γ), inf and NaN
    inputs included: a search may switch between them whenever a background build is ready.
    NaN where the other has NaN, but which NaN (sign, payload) may differ: when NaN operands
    meet, the one that propagates follows the compiler's operand order, which differs between
    builds (a review found it in y, ∂w and ∂γ on random spaces)."""
    space = SearchSpace.grafs()
    cell = space.relax("c", seed=0)
    _randomize(cell, 0)
    big = cell._new_c_cell(cell.active_ops())
    x = _inputs(3001, seed=1)
    x[:6] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 88.8])
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    g = cell.gamma.detach()
    for stage in (110, 91, 60, 31, 12, 6):
        cell.drop(cell.num_active() - stage)
        mask = cell._active_index().mask_i8
        own = cell._new_c_cell(cell.active_ops())
        w = _weights(cell, seed=stage)
        outs = [(k._k.forward(x, w, g, mask), *k._k.backward(x, w, g, mask, gy),
                 *k._k.forward_dx(x, w, g, mask)) for k in (big, own)]
        for name, a, b in zip(("y", "x", "w", "g", "weight call's y", "∂y/∂x"), *outs):
            assert torch.equal(a.isnan(), b.isnan()), f"{stage} ops: {name} differs"
            a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)     # (which NaN may differ)
            assert torch.equal(_bits(a), _bits(b)), f"{stage} ops: {name} differs"
        for y, gx, _, _, y1, d in outs:        # the one pass gives the two kernels' bits
            assert torch.equal(_bits(y1), _bits(y))
            assert torch.equal((gy * d).isnan(), gx.isnan())
            assert torch.equal(_bits((gy * d).nan_to_num(0.0)), _bits(gx.nan_to_num(0.0))), stage
        assert torch.isnan(outs[0][0][4]) and torch.isfinite(outs[0][0][6:]).all()


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
def test_background_builds_change_no_result(monkeypatch, tmp_path):
    """A search whose cell compiles each new active set in the background (calling its older
    build meanwhile) ends with the same α, γ and formula as one that compiles in the call,
    and only its first build blocks."""
    import grafs.runtime.cell as cell_mod
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(c_cell, "_LIBS", {})
    torch.manual_seed(0)
    x = torch.randn(96, 4)
    y = (x[:, :1] * x[:, 1:2]).tanh()
    sp = SearchSpace("B(U(x), U(x))", unary=["gelu", "tanh", "sin", "abs", "exp", "identity", "mul_gamma"],
                     binary=["add", "mul", "max"])
    blocking = []
    build = c_kernels.CCell.build
    monkeypatch.setattr(c_kernels.CCell, "build", lambda self: blocking.append(1) or build(self))
    out = {}
    for background in (True, False):
        monkeypatch.setattr(cell_mod.RelaxedCell, "c_build_in_background", background)
        blocking.clear()
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        r = search(net, (x, y), space=sp, epochs=6, seed=0, batch_size=16,
                         loss_fn=torch.nn.functional.mse_loss, shrink_start=1,
                         cell_mode="c", progress=False)
        out[background] = (r.formula, len(blocking))
    assert out[True][0] == out[False][0]
    assert out[True][1] == 1 and out[False][1] > 1


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
def test_weight_calls_one_pass_or_two_kernels_the_same_search(monkeypatch, tmp_path):
    """A search whose weight calls take the one-pass kernel and one whose weight calls take
    the forward and backward kernels end with the same formula, losses, α and γ to the bit."""
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    x = torch.randn(96, 4)
    y = (x[:, :1] * x[:, 1:2]).tanh()
    sp = SearchSpace("B(U(x), U(x))", unary=["gelu", "tanh", "sin", "abs", "exp", "identity", "mul_gamma"],
                     binary=["add", "mul", "max"])
    out, passes = {}, []
    forward_dx = c_kernels.CCellKernels.forward_dx
    monkeypatch.setattr(c_kernels.CCellKernels, "forward_dx",
                        lambda self, *a: passes.append(1) or forward_dx(self, *a))
    import grafs.compiler.triton.autograd as cell_autograd
    rule = cell_autograd.one_pass_call
    for one_pass in (True, False):
        monkeypatch.setattr(cell_autograd, "one_pass_call",
                            lambda x, w, g, _on=one_pass: _on and rule(x, w, g))
        passes.clear()
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        r = search(net, (x, y), space=sp, epochs=6, seed=0, batch_size=16,
                   loss_fn=torch.nn.functional.mse_loss, shrink_start=1, cell_mode="c",
                   progress=False)
        out[one_pass] = (r.formula, r.cell_state, r.history["train_loss"], len(passes))
    assert out[True][3] > 0 and out[False][3] == 0
    assert out[True][0] == out[False][0] and out[True][2] == out[False][2]
    for k, a in out[True][1].items():
        assert torch.equal(a, out[False][1][k]), k


def test_one_pass_only_for_fp32_weight_calls_under_grad_mode(monkeypatch):
    """The one pass serves weight calls on fp32 inputs under grad mode only: not under
    no_grad (nothing to save), not for other dtypes (fp32 dy/dx would double a bf16 input's
    memory, and float64 gy would round otherwise), not when w or γ need gradients."""
    cell = SearchSpace.grafs().relax("c", seed=0)
    _randomize(cell, 0)
    calls = []
    for name in ("forward", "forward_dx"):
        real = getattr(c_kernels.CCellKernels, name)
        monkeypatch.setattr(c_kernels.CCellKernels, name,
                            lambda self, *a, _r=real, _n=name, **k: calls.append(_n) or _r(self, *a, **k))
    x = _inputs(999, seed=1)
    w = _weights(cell, seed=1)
    cell.requires_grad_(False)
    try:
        for dtype, grad_mode, want in [(torch.float32, True, "forward_dx"),
                                       (torch.float32, False, "forward"),
                                       (torch.bfloat16, True, "forward"),
                                       (torch.float64, True, "forward")]:
            calls.clear()
            xi = x.detach().to(dtype).clone().requires_grad_()
            with torch.set_grad_enabled(grad_mode):
                y = cell(xi, weights=w)
            assert calls == [want], (dtype, grad_mode, calls)
            if grad_mode:
                y.sum().backward()
                assert xi.grad.dtype == dtype and torch.isfinite(xi.grad).all()
    finally:
        cell.requires_grad_(True)
    calls.clear()
    cell(x.clone().requires_grad_(), weights=w.clone().requires_grad_()).sum().backward()
    assert calls == ["forward"]                       # an arch call: the two kernels


def test_checkpointed_weight_calls_recompute_the_same_path():
    """Non-reentrant activation checkpointing recomputes a weight call as it ran (the path
    is decided from the call alone): the same gradients as without checkpointing."""
    from torch.utils.checkpoint import checkpoint
    cell = SearchSpace.grafs().relax("c", seed=0)
    _randomize(cell, 0)
    w = _weights(cell, seed=3)
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    cell.requires_grad_(False)
    try:
        grads = []
        for ckpt in (False, True):
            lin.zero_grad()
            f = (lambda t: cell(lin(t), weights=w))
            out = checkpoint(f, x, use_reentrant=False) if ckpt else f(x)
            out.square().sum().backward()
            grads.append(lin.weight.grad.clone())
    finally:
        cell.requires_grad_(True)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("mode", ["c", "lean", "eager"])
def test_a_cell_in_use_deep_copies_and_pickles(mode):
    """copy.deepcopy (an EMA of a model under search, say) and pickling drop the compiled code,
    a pending background build included, and the copy computes the same values."""
    import copy
    import io
    cell = SearchSpace.grafs().relax(mode, seed=0)
    x = _inputs(300, seed=4)
    cell(x)
    cell.drop(40)
    w = _weights(cell, seed=4)
    y = cell(x, w)                     # (mode c: the next build may still be compiling)
    twin = copy.deepcopy(cell)
    buf = io.BytesIO()
    torch.save(cell, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for other in (twin, loaded):
        assert other.active_ops() == cell.active_ops()
        assert torch.equal(other(x, w), y)


def test_a_searcher_starts_the_first_build_when_it_builds_the_cell(monkeypatch, tmp_path):
    """grafs.Searcher (and so every search) starts compiling the first active set's C code in
    the background as it builds the cell; the first call uses that build, not another."""
    import grafs
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(c_cell, "_LIBS", {})
    sp = SearchSpace("B(U(x), U(x))", unary=["gelu", "tanh", "abs"], binary=["add", "mul"])
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    s = grafs.Searcher(net, epochs=3, space=sp, cell_mode="c")
    first = s.cell._c_pending
    assert first is not None and first.active == s.cell.active_ops()
    assert not s.cell.prebuild(torch.device("cpu"))          # one build per active set
    net(torch.randn(16, 4)).sum().backward()
    assert s.cell._generated_last["c"][1] is first
    # nothing to start where the calls will not run the C cell
    lean = sp.relax("lean", seed=0)
    assert not lean.prebuild(torch.device("cpu")) and lean._c_pending is None


def _status_of_child(fn, timeout: int = 60) -> int:
    """Run ``fn`` in a forked child (killed after ``timeout`` s); its exit status (0: ok)."""
    import os
    import signal
    import traceback
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(timeout)
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def test_a_process_forked_during_a_build_builds_again(tmp_path, monkeypatch):
    """A child forked while the first build compiles in the background (a data loader's or a
    job's process) builds the cell itself: the parent's build thread does not exist there, and
    the child waited for it forever."""
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(c_cell, "_LIBS", {})
    cell = SearchSpace.grafs().relax("c", seed=0)
    x = torch.randn(1000)
    assert cell.prebuild(torch.device("cpu"))

    def call_and_save():
        torch.save(cell(x), tmp_path / "child.pt")
    assert _status_of_child(call_and_save) == 0
    assert torch.equal(torch.load(tmp_path / "child.pt", weights_only=True), cell(x))


def test_locks_held_when_the_process_forks_are_new_in_the_child(tmp_path, monkeypatch):
    """Expr interning and the build cache's locks, held by another thread at the fork, would
    never be released in the child: the child gets new ones."""
    import threading
    from grafs.grammar import expr as E
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(c_cell, "_LIBS", {})
    held, release = threading.Event(), threading.Event()

    def hold():
        with E._INTERN_LOCK, c_cell._LOCK:
            held.set()
            release.wait()
    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    try:
        def work():
            E.Expr("add", (E.var(), E.const(12345.678)))
            c_cell.build_library("int grafs_fork_test_symbol(void) { return 7; }\n")
        assert _status_of_child(work) == 0
    finally:
        release.set()
        t.join()
