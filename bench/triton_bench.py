"""The triton backend on a GPU, measured side by side in one run:

1. achieved memory bandwidth of the generated forward and backward kernels of discretized
   formulas, as a fraction of the device's copy bandwidth (``y.copy_(x)``, measured here too);
   forward moves 2 tensors (read x, write y), backward 3 (read x and dy, write dx);
2. the relaxed GRAFS cell (110 candidate ops) at several shrink stages: forward+backward time of
   grafs' Triton cell (one kernel pair for all stages; the mask selects) against plain
   ``torch.compile`` of the eager cell, as ratios, and each against native GELU.

    python -m bench.triton_bench [--numel 67108864] [--repeats 20] [--stages 110 54 24 6]
    python -m bench.triton_bench --smoke  # no GPU: every code path through Triton's CPU interpreter
                                          # on a tiny tensor (checks the script; timings meaningless)

Without a CUDA device (and without --smoke) the script prints why it skipped and exits 0.
The per-call cost of formula modules (triton, inductor and plain torch.compile over native GELU,
2^14 ... 2^26 elements) is ``python -m bench.formula_overhead``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numel", type=int, default=None, help="elements (default 2^26; 2^12 with --smoke)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--formulas", nargs="*", default=["F_RN^2", "F_ViT^1", "F_GPT^3", "F_GPT^4"],
                    help="names from the paper (grafs.testing.paper_formulas) or formula text")
    ap.add_argument("--stages", type=int, nargs="*", default=None, help="active ops per stage")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend of the baseline (default inductor; eager with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter run of every code path")
    return ap.parse_args()


def main() -> int:
    a = _args()
    if a.smoke:
        os.environ["TRITON_INTERPRET"] = "1"   # before anything imports triton
    import torch

    if not a.smoke and not torch.cuda.is_available():
        print("bench.triton_bench: skipped: no CUDA device. The triton backend's kernels need a GPU "
              "(on the CPU they only run in Triton's interpreter, far too slow to time). "
              "Run `python -m bench.triton_bench --smoke` to check the script itself on the CPU.")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench.triton_bench: skipped: the 'triton' package is not installed (pip install triton)")
        return 0

    import torch.nn.functional as F

    import grafs
    from bench.timing import first_call, sync, table, time_fwd_bwd
    from grafs.compiler.triton import autograd as triton_ops, backend as tb
    from grafs.runtime.space import SearchSpace
    from grafs.testing.paper_formulas import PAPER_FORMULAS

    dev = torch.device("cpu" if a.smoke else "cuda")
    dtype = getattr(torch, a.dtype)
    numel = a.numel or (1024 if a.smoke else 1 << 26)
    repeats = a.repeats or (1 if a.smoke else 20)
    warmup = 1 if a.smoke else 3
    stages = a.stages or ([110, 6] if a.smoke else [110, 54, 24, 6])
    cbackend = a.compile_backend or ("eager" if a.smoke else "inductor")

    def kernel_time(fn, iters: int = 10) -> float:
        """Median seconds per call of fn() (CUDA events around `iters` back-to-back calls)."""
        for _ in range(warmup):
            fn()
        sync(dev)
        times = []
        for _ in range(max(repeats, 1)):
            if dev.type == "cuda":
                t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0.record()
                for _ in range(iters):
                    fn()
                t1.record()
                torch.cuda.synchronize()
                times.append(t0.elapsed_time(t1) / 1e3 / iters)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    torch.manual_seed(0)
    x = (2 * torch.randn(numel, device=dev)).to(dtype)
    y = torch.empty_like(x)
    nbytes = x.numel() * x.element_size()
    t_copy = kernel_time(lambda: y.copy_(x))
    bw_copy = 2 * nbytes / t_copy
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (Triton interpreter)"
    print(f"device={name} numel={numel} dtype={a.dtype} copy bandwidth y.copy_(x): "
          f"{bw_copy / 1e9:.1f} GB/s")
    if a.smoke:
        print("  --smoke: Triton's CPU interpreter; the numbers below only show the script runs")

    # -- 1. bandwidth of the formula kernels --------------------------------------------------------
    gy = torch.randn_like(x)
    xg = x.detach().clone().requires_grad_(True)
    t_gelu = time_fwd_bwd(F.gelu, xg, repeats, warmup)
    rows = []
    for f in a.formulas:
        text = PAPER_FORMULAS[f][0] if f in PAPER_FORMULAS else f
        act = grafs.compile(text, backend="triton").to(dev)
        with torch.no_grad():
            t0 = time.perf_counter()
            act(x)
            sync(dev)
            first = time.perf_counter() - t0
        tf = act._triton
        p = (torch.stack([act.params[n].detach().float() for n in tf.param_names])
             if tf.param_names else torch.zeros(1, device=dev))
        t_f = kernel_time(lambda: triton_ops.formula_fwd(x, p, tf.key))
        t_b = kernel_time(lambda: triton_ops.formula_bwd(x, p, gy, tf.key))
        t_fb = time_fwd_bwd(act, xg, repeats, warmup)
        ind = grafs.compile(text, backend="inductor").to(dev)
        t_ind = time_fwd_bwd(ind, xg, repeats, warmup)
        bw_f, bw_b = 2 * nbytes / t_f, 3 * nbytes / t_b
        rows.append([f, f"{bw_f / 1e9:.3g}", f"{bw_f / bw_copy:.3g}", f"{bw_b / 1e9:.3g}",
                     f"{bw_b / bw_copy:.3g}", f"{t_fb * 1e3:.3f}", f"{t_ind / t_fb:.3g}",
                     f"{t_fb / t_gelu:.2f}", f"{first:.1f}"])
        print(f"  {f}: fwd {bw_f / 1e9:.0f} GB/s ({bw_f / bw_copy:.2f} of copy), "
              f"bwd {bw_b / 1e9:.0f} GB/s ({bw_b / bw_copy:.2f})", flush=True)
    print()
    print(table(rows, ["formula", "fwd GB/s", "fwd/copy", "bwd GB/s", "bwd/copy",
                       "fwd+bwd ms", "inductor/triton", "triton/GELU", "first call s"]))

    # -- 2. the relaxed cell ------------------------------------------------------------------------
    space = SearchSpace.grafs()
    cell = space.relax(mode="eager", seed=0).to(dev)
    t0 = time.perf_counter()
    tcell = tb.TritonCell(space, cell.slot_of, cell.gamma_of, cell.clip)
    gen = time.perf_counter() - t0
    n_kernels = tb.kernel_cache_size()
    rows = []
    print(f"\nrelaxed cell {space.template}: {space.num_ops} slots, code generation {gen:.2f} s; "
          f"native GELU fwd+bwd {t_gelu * 1e3:.3f} ms")
    for stage in stages:
        cell.drop(cell.num_active() - stage)
        w = cell.sample_weights().detach().requires_grad_(True)
        g = cell.gamma

        def tri(xx, w=w, g=g):
            return tcell(xx, w, g, cell.active)

        def eager(xx, w=w):
            return cell(xx, weights=w)
        comp = torch.compile(eager, backend=cbackend)
        firsts = [first_call(fn, xg) for fn in (tri, comp)]
        t_tri = time_fwd_bwd(tri, xg, repeats, warmup)
        t_comp = time_fwd_bwd(comp, xg, repeats, warmup)
        rows.append([cell.num_active(), f"{t_tri * 1e3:.3f}", f"{t_comp * 1e3:.3f}",
                     f"{t_comp / t_tri:.2f}", f"{t_tri / t_gelu:.1f}", f"{t_comp / t_gelu:.1f}",
                     f"{firsts[0]:.1f}", f"{firsts[1]:.1f}"])
        print(f"  {cell.num_active():>3} ops: triton {t_tri * 1e3:.3f} ms, torch.compile "
              f"{t_comp * 1e3:.3f} ms", flush=True)
    assert tb.kernel_cache_size() == n_kernels + 1, "the cell should load one kernel file for all stages"
    print()
    print(table(rows, ["active ops", "triton ms", f"compile({cbackend}) ms", "compile/triton",
                       "triton/GELU", "compile/GELU", "first triton s", "first compile s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
