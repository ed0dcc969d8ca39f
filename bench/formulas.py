"""Forward+backward time of the 15 paper formulas: grafs (inductor) vs plain torch.compile of
the hand-written function vs eager PyTorch, as ratios to native F.gelu, per input size and
intra-op thread count, measured side by side (interleaved rounds, shuffled) in the same run.

    python -m bench.formulas [--numel 2000000 ...] [--threads 1 2] [--repeats 20] [--only F_RN^1]
    python -m bench.formulas --numel 1024 4096 16384 65536 262144 1048576 4194304 --threads 1 2
    python -m bench.formulas --numel 1048576 4194304 --threads 1 2 --masked-tail

Plain torch.compile is the static compile of each size (Dynamo reset per size and thread
count, as a network with fixed shapes gets it); grafs compiles once per dtype and thread count
for every size. grafs/compile is the target ratio (issue 30: within 1.05 at every size).
``--masked-tail`` adds the formulas compiled as before the scalar tail loop (Inductor's masked
vector tail inside the loop body), timed in the same rounds.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time

import torch
import torch.nn.functional as F

import grafs
from bench.timing import device, first_call, sync, table
from grafs.compiler import inductor_formula
from grafs.testing.paper_formulas import PAPER_FORMULAS


def fwd_bwd(fn, x: torch.Tensor, g: torch.Tensor):
    def call():
        x.grad = None
        fn(x).backward(g)
    return call


def shuffled_rounds(fns, dev: torch.device, warmup: int, repeats: int, seed: int = 0) -> list[float]:
    """Median seconds of each ``fn()``, one call of each per round in a new random order: a call
    that follows another kind of call (a native kernel, a Dynamo-compiled function) runs slower
    at small sizes (up to +35 us here), so a fixed order favours whoever never comes first."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync(dev)
    rng = random.Random(seed)
    samples = [[] for _ in fns]
    order = list(range(len(fns)))
    for _ in range(repeats):
        rng.shuffle(order)
        for k in order:
            t = time.perf_counter()
            fns[k]()
            sync(dev)
            samples[k].append(time.perf_counter() - t)
    return [statistics.median(s) for s in samples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numel", type=int, nargs="+", default=[2_000_000])
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                    help="intra-op thread counts (torch.set_num_threads), each measured in turn")
    ap.add_argument("--repeats", type=int, default=20,
                    help="rounds at the largest sizes; smaller sizes get more (up to 1000)")
    ap.add_argument("--only", nargs="*", help="formula keys (e.g. F_RN^1)")
    ap.add_argument("--masked-tail", action="store_true",
                    help="also time the formulas compiled with Inductor's masked vector tail")
    a = ap.parse_args()
    dev = device()
    formulas = {k: v for k, v in PAPER_FORMULAS.items() if not a.only or k in a.only}
    acts = {k: grafs.compile(text).to(dev) for k, (text, _) in formulas.items()}
    masked = {k: grafs.compile(text).to(dev) for k, (text, _) in formulas.items()} \
        if a.masked_tail else {}
    first: dict[str, float] = {}
    summary, rows = [], []
    for threads in a.threads:
        torch.set_num_threads(threads)
        for n in a.numel:
            torch.manual_seed(0)
            x = (4 * torch.randn(n, device=dev)).requires_grad_()
            g = torch.ones_like(x)
            reps = min(1000, max(a.repeats, a.repeats * (1 << 18) // n))
            torch._dynamo.reset()   # plain torch.compile: a fresh static compile of this size
            print(f"device={dev} numel={n} fp32 threads={threads} rounds={reps}", flush=True)
            ratios = []
            for key, (text, ref) in formulas.items():
                act = acts[key]
                t_first = first_call(act, x)    # compiles at the first size of a thread count
                first.setdefault(key, t_first)
                tc = torch.compile(ref, fullgraph=True, dynamic=False)
                first_call(tc, x)
                fns = [act, tc, ref, F.gelu]
                if masked:
                    with _masked_tail():
                        first_call(masked[key], x)
                    fns.append(masked[key])
                t_grafs, t_tc, t_eager, t_gelu, *t_masked = shuffled_rounds(
                    [fwd_bwd(f, x, g) for f in fns], dev, 3, reps)
                tail = [t_masked[0] / t_tc, t_grafs / t_masked[0]] if masked else []
                ratios.append((t_grafs / t_tc, t_grafs / t_gelu, t_tc / t_gelu, t_eager / t_gelu,
                               *tail))
                rows.append([key, n, threads, f"{t_grafs / t_gelu:.2f}", f"{t_tc / t_gelu:.2f}",
                             f"{t_eager / t_gelu:.2f}", f"{t_grafs / t_tc:.2f}",
                             *(f"{r:.2f}" for r in tail)])
                print(f"  {key}: grafs {t_grafs*1e3:.3f} ms, torch.compile {t_tc*1e3:.3f} ms, "
                      f"eager {t_eager*1e3:.3f} ms, F.gelu {t_gelu*1e3:.3f} ms"
                      + (f", masked tail {t_masked[0]*1e3:.3f} ms" if masked else ""), flush=True)
            k = len(ratios[0])
            med = [statistics.median(r[i] for r in ratios) for i in range(k)]
            summary.append([n, threads, f"{med[0]:.2f}", f"{max(r[0] for r in ratios):.2f}",
                            *(f"{m:.2f}" for m in med[1:])])
    print()
    tail_cols = ["masked tail/compile", "grafs/masked tail"] if masked else []
    print(table(rows, ["formula", "numel", "threads", "grafs/gelu", "compile/gelu", "eager/gelu",
                       "grafs/compile", *tail_cols]))
    print()
    print("grafs first call (s, compiles): " + ", ".join(f"{k} {v:.1f}" for k, v in first.items()))
    print()
    print(f"medians (max) over {len(formulas)} formulas, fwd+bwd fp32 on {dev}:")
    print(table(summary, ["numel", "threads", "grafs/compile", "max", "grafs/gelu", "compile/gelu",
                          "eager/gelu", *tail_cols]))


@contextlib.contextmanager
def _masked_tail():
    """Compile inside it as before the scalar tail loop: Inductor's default masked vector tail."""
    inductor_formula.scalar_tail = False
    try:
        yield
    finally:
        inductor_formula.scalar_tail = True


if __name__ == "__main__":
    main()
