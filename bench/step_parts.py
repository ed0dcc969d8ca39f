"""Where a CPU search step goes: the C kernels, the cell calls around them, and the rest.

For each stage (active ops) of the relaxed cell in the mnist1d CNN (the bench.search_step
setup: its model, batches, optimizers and ``Stepper``), measured side by side in one run,
one thread:

* the plain training step and the search step (arch step + weight step), as bench.search_step,
  and the search step with its weight calls on the forward and backward kernels instead of
  the one-pass kernel (the same bits);
* the C kernels alone on one site's input (ctypes calls, no Python around them): the
  forward and the backward with the partial sums of an arch call, and a weight call's one
  pass (y and dy/dx);
* one cell call as a search makes it (mixture weights drawn beforehand), forward+backward,
  in an arch call (α, γ trainable) and in a weight call (α, γ frozen);

then splits the search step into the kernels (every site: one forward and one backward of
kind an arch call and a weight call make), the rest of the cell calls (their Python, autograd and partial-sum bookkeeping)
and everything else (the network's two passes, both optimizers, the sample draws). Times are
medians of interleaved rounds (every quantity once per round), so drift hits them alike.

    python -m bench.step_parts                    # stages 110 54 24 6
    python -m bench.step_parts --stages 110 6 --rounds 15
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench.search_step import SearchStep, cpu_stage_bench, ms
from bench.timing import table
import grafs.compiler.triton.autograd as cell_autograd


def _median_us(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, nargs="+", default=[110, 54, 24, 6])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds per stage")
    ap.add_argument("--steps", type=int, default=10, help="steps per round (plain and search)")
    ap.add_argument("--calls", type=int, default=20, help="kernel and cell calls per round")
    a, dev, conf, space, timer, plain = cpu_stage_bench(ap)
    torch.manual_seed(0)
    search = SearchStep(conf, dev, "auto", space)
    cell = search.cell
    if cell.mode_for(dev) != "c":
        sys.exit("bench.step_parts measures the C cell; it cannot run here")
    shapes = search.site_shapes(timer.train[0][0])
    print("# Where a CPU search step goes (mnist1d CNN, one thread)\n")
    print(f"torch {torch.__version__}, {len(shapes)} sites {sorted(set(shapes))}; medians of "
          f"{a.rounds} interleaved rounds ({a.steps} steps, {a.calls} calls each)\n")
    rows = []
    for stage in a.stages:
        cell.drop(cell.num_active() - stage)
        timer.block(search, 1)
        cell.finish_builds()                      # the exact build of this set: steady state
        timer.block(search, 3)
        timer.block(plain, 3)
        k = cell._generated_last["c"][1]._k
        lib, one_pass = k.lib(), k.one_pass()
        idx = cell._active_index()
        per_site = []
        for shape in shapes:
            x = torch.randn(shape)
            gy = torch.randn(shape)
            w = (idx.unit_weights.clone() if cell.is_discrete()
                 else cell.sample_weights().detach()).contiguous()
            g, m = cell.gamma.detach().contiguous(), idx.mask_i8
            y, gx, d = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
            part = torch.zeros(k.NC, dtype=torch.float64)
            p = (x.data_ptr(), w.data_ptr(), g.data_ptr(), m.data_ptr())
            per_site.append((x, gy, y, gx, d, part, p, w))     # (w kept alive: p points into it)

        def kernels(kind):
            def run():
                for x, gy, y, gx, d, part, p, _ in per_site:
                    n = x.numel()
                    if kind == "fwd":
                        lib.grafs_cell_fwd(*p, y.data_ptr(), n)
                    elif kind == "one_pass":
                        one_pass.grafs_cell_fwd_dx(*p, y.data_ptr(), d.data_ptr(), n)
                    else:
                        lib.grafs_cell_bwd(*p, gy.data_ptr(), gx.data_ptr(), part.data_ptr(), n, 1)
            return run

        def cell_calls(arch: bool):
            xs = [s[0].clone().requires_grad_() for s in per_site]
            gys = [s[1] for s in per_site]
            params = list(cell.arch_parameters())

            def run():
                if not arch:
                    for q in params:
                        q.requires_grad_(False)
                try:
                    cell.refresh_samples(len(xs))       # one draw per pass, as a search
                    torch.autograd.backward([cell(x) for x in xs], gys)
                    for x in xs:
                        x.grad = None
                    cell.clear_samples()
                finally:
                    for q in params:
                        q.requires_grad_(True)
                        q.grad = None
            return run

        def two_kernel_search():
            # the same step with every weight call on the forward and backward kernels (the
            # same bits)
            rule = cell_autograd.one_pass_call
            cell_autograd.one_pass_call = lambda x, w, g: False
            try:
                return timer.block(search)
            finally:
                cell_autograd.one_pass_call = rule

        parts = {"plain": lambda: timer.block(plain), "search": lambda: timer.block(search),
                 "search_two": two_kernel_search,
                 "fwd": kernels("fwd"), "bwd_wg": kernels("bwd_wg"), "one_pass": kernels("one_pass"),
                 "arch_call": cell_calls(True), "weight_call": cell_calls(False)}
        samples = {name: [] for name in parts}
        for _ in range(a.rounds):
            for name, fn in parts.items():
                if name in ("plain", "search", "search_two"):
                    samples[name].append(fn())
                else:
                    samples[name].append(_median_us(fn, a.calls))
        t = {name: statistics.median(v) for name, v in samples.items()}
        kern = t["fwd"] + t["bwd_wg"] + t["one_pass"]         # all sites, arch and weight pass
        calls = t["arch_call"] + t["weight_call"]
        rest = t["search"] - calls
        rows.append([str(stage), ms(t["plain"]), ms(t["search"]), f"{t['search'] / t['plain']:.1f}x",
                     f"{t['search_two'] / t['plain']:.1f}x ({t['search'] / t['search_two']:.2f})",
                     f"{ms(t['fwd'])} / {ms(t['bwd_wg'])} / {ms(t['one_pass'])}", ms(kern),
                     ms(calls - kern), ms(rest), f"{rest / t['plain']:.2f}x"])
        print(f"[{stage} ops] search {ms(t['search'])} ms, plain {ms(t['plain'])} ms", file=sys.stderr,
              flush=True)
    print(table(rows, ["active ops", "plain ms", "search ms", "search / plain",
                       "weight calls in two kernels: search / plain (one pass / two)",
                       "kernels per pass, all sites: fwd / bwd+partials / weight call's one pass ms",
                       "kernels per step ms", "cell calls beyond kernels ms",
                       "rest of the step ms", "rest / plain"]))
    print("\nkernels per step = an arch call's forward and backward (with the partial sums) + "
          "a weight call's one pass (y and dy/dx; its backward is a multiplication), every site; cell calls beyond kernels = the measured arch and weight cell "
          "calls (samples drawn once per pass, as a search) minus those kernels; rest = search "
          "step minus the cell calls (the network's two passes, both optimizers).")


if __name__ == "__main__":
    main()
