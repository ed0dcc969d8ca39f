"""Forward+backward time of the 15 paper formulas: grafs (inductor) vs eager PyTorch vs plain
torch.compile of a hand-written function, as ratios to native F.gelu measured in the same run.

    python -m bench.formulas [--numel 2000000] [--repeats 20]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import grafs
from bench.timing import device, first_call, table, time_fwd_bwd
from grafs.testing.paper_formulas import PAPER_FORMULAS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--numel", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", nargs="*", help="formula keys (e.g. F_RN^1)")
    a = ap.parse_args()
    dev = device()
    torch.manual_seed(0)
    x = (4 * torch.randn(a.numel, device=dev)).requires_grad_()
    t_gelu = time_fwd_bwd(F.gelu, x, a.repeats)
    print(f"device={dev} numel={a.numel} fp32 threads={torch.get_num_threads()} "
          f"native F.gelu fwd+bwd = {t_gelu * 1e3:.2f} ms")
    rows = []
    for key, (text, ref) in PAPER_FORMULAS.items():
        if a.only and key not in a.only:
            continue
        act = grafs.compile(text).to(dev)
        compile_s = first_call(act, x)
        tc = torch.compile(ref, fullgraph=True)
        t_grafs = time_fwd_bwd(act, x, a.repeats)
        t_eager = time_fwd_bwd(ref, x, a.repeats)
        t_tc = time_fwd_bwd(tc, x, a.repeats)
        rows.append([key, f"{t_grafs / t_gelu:.2f}", f"{t_eager / t_gelu:.2f}", f"{t_tc / t_gelu:.2f}",
                     f"{t_eager / t_grafs:.2f}", f"{compile_s:.1f}"])
        print(f"  {key}: grafs {t_grafs*1e3:.2f} ms, eager {t_eager*1e3:.2f} ms, "
              f"torch.compile {t_tc*1e3:.2f} ms", flush=True)
    print()
    print(table(rows, ["formula", "grafs/gelu", "eager/gelu", "torch.compile/gelu",
                       "eager/grafs", "grafs first call (s)"]))


if __name__ == "__main__":
    main()
