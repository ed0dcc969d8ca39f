"""Per-call cost of a formula module: forward+backward over native GELU (``nn.GELU()``), side by
side, at sizes where per-call overhead dominates (2^14) up to where the kernels do.

Columns, each as a ratio to native GELU measured in the same run:
  inductor            grafs.compile(text) (the default backend: Inductor kernels called
                      without Dynamo, grafs.compiler.inductor_formula)
  via torch.compile   the same generated function through torch.compile (the previous path,
                      still used for formulas with trainable-family modules)
  plain compile       torch.compile(fullgraph=True) of the hand-written function
  triton              grafs.compile(text, backend="triton") (GPU only; "-" on the CPU)

    python -m bench.formula_overhead [--formula F_RN^2] [--sizes 14 16 18 20 22] [--threads 1]
    python -m bench.formula_overhead --device cuda       # sizes 2^14 ... 2^26 by default

Timing: medians of ``--repeats`` calls per method, the methods interleaved for ``--rounds``
rounds (rotated: each round starts with another method), the best round kept (on a shared
machine, other processes only ever add time).
"""
from __future__ import annotations

import argparse
import sys

import torch

import grafs
from bench.timing import table, time_fwd_bwd
from grafs.compiler.inductor_formula import InductorFormula
from grafs.testing.paper_formulas import PAPER_FORMULAS


def _args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formula", default="F_RN^2", help="a paper formula's name or formula text")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="log2 of the element counts")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=None, help="calls per measurement")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    return ap.parse_args()


def main() -> int:
    a = _args()
    dev = torch.device(a.device)
    if dev.type == "cpu":
        torch.set_num_threads(a.threads)
    text, hand = PAPER_FORMULAS.get(a.formula, (a.formula, None))
    sizes = a.sizes or (list(range(14, 27, 2)) if dev.type == "cuda" else list(range(14, 23, 2)))

    methods = {"native": torch.nn.GELU().to(dev), "inductor": grafs.compile(text).to(dev)}
    via = grafs.compile(text).to(dev)
    via._compiled = InductorFormula(via._fn, len(via.program.params), fallback=True)
    methods["via torch.compile"] = via
    if hand is not None:
        methods["plain compile"] = torch.compile(hand, fullgraph=True)
    have_triton = dev.type == "cuda"
    if have_triton:
        try:
            import triton  # noqa: F401
            methods["triton"] = grafs.compile(text, backend="triton").to(dev)
        except ImportError:
            have_triton = False

    print(f"{text!r} on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}"
          f"{'' if dev.type == 'cuda' else f', {torch.get_num_threads()} thread(s)'}, fp32, "
          f"forward+backward; torch {torch.__version__}")
    rows = []
    for e in sizes:
        n = 1 << e
        x = torch.randn(n, device=dev).requires_grad_(True)
        g = torch.ones_like(x)
        repeats = a.repeats or max(5, min(400, (1 << 22) // n if dev.type == "cpu" else 200))
        for fn in methods.values():            # compile and warm up outside the timing
            for _ in range(3):
                fn(x).backward(g)
        best = {k: float("inf") for k in methods}
        names = list(methods)
        for r in range(a.rounds):     # each round in another order: no method always follows another
            for k in names[r % len(names):] + names[:r % len(names)]:
                best[k] = min(best[k], time_fwd_bwd(methods[k], x, repeats, warmup=0, g=g))
        nat = best["native"]
        ratio = lambda k: f"{best[k] / nat:.2f}" if k in best else "-"   # noqa: E731
        rows.append([f"2^{e}", f"{nat * 1e6:.1f}", ratio("inductor"), ratio("via torch.compile"),
                     ratio("plain compile"), ratio("triton")])
        print(f"  2^{e}: " + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in best.items()), flush=True)
    print()
    print(table(rows, ["elements", "native GELU us", "inductor / GELU", "via torch.compile / GELU",
                       "plain compile / GELU", "triton / GELU"]))
    if not have_triton:
        print("\ntriton: not measured (needs a CUDA device and the triton package)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
