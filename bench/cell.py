"""The relaxed GRAFS cell (110 candidate ops) at 110, 54, 24 and 6 active ops: forward+backward
time and bytes saved for backward, for eager PyTorch, plain torch.compile and grafs' fused cell,
as ratios to native GELU measured in the same run, plus compile times.

    python -m bench.cell [--numel 2000000] [--repeats 5] [--stages 110 54 24 6]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import grafs
from bench.timing import device, first_call, table, time_fwd_bwd
from grafs.runtime.space import SearchSpace
from grafs.testing.memory import saved_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--numel", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stages", type=int, nargs="*", default=[110, 54, 24, 6])
    ap.add_argument("--modes", nargs="*", default=["eager", "compile", "fused"])
    a = ap.parse_args()
    dev = device()
    torch.manual_seed(0)
    x = (2 * torch.randn(a.numel, device=dev)).requires_grad_()
    t_gelu = time_fwd_bwd(F.gelu, x, 10)
    in_bytes = x.numel() * x.element_size()
    print(f"device={dev} numel={a.numel} fp32 threads={torch.get_num_threads()} "
          f"native GELU fwd+bwd = {t_gelu * 1e3:.2f} ms")
    space = SearchSpace.grafs()
    cells = {m: space.relax(mode=m, seed=0).to(dev) for m in a.modes}
    ref = cells[a.modes[0]]
    for c in cells.values():
        c.load_state_dict(ref.state_dict())
    rows = []
    for stage in a.stages:
        for c in cells.values():  # the same drops for every mode
            c.drop(c.num_active() - stage)
        for mode, c in cells.items():
            first = first_call(c, x)
            t = time_fwd_bwd(c, x, a.repeats, warmup=1)
            sb = saved_bytes(c, x)
            rows.append([stage, mode, f"{t / t_gelu:.1f}", f"{t * 1e3:.1f}", f"{sb / in_bytes:.2f}",
                         f"{first:.1f}"])
            print(f"  {stage:>3} ops {mode:>7}: {t*1e3:8.1f} ms  saved {sb/in_bytes:6.2f}x input  "
                  f"first call {first:.1f}s", flush=True)
        if stage == len(space.holes):  # fully discrete: compare with the compiled formula
            disc = grafs.compile(cells[a.modes[0]].discretize()).to(dev)
            first = first_call(disc, x)
            t = time_fwd_bwd(disc, x, a.repeats)
            rows.append([stage, "formula", f"{t / t_gelu:.1f}", f"{t * 1e3:.1f}",
                         f"{saved_bytes(disc, x) / in_bytes:.2f}", f"{first:.1f}"])
            print(f"  discretized formula {cells[a.modes[0]].discretize()}: {t*1e3:.1f} ms")
    print()
    print(table(rows, ["active ops", "mode", "time / GELU", "ms", "saved / input", "first call (s)"]))


if __name__ == "__main__":
    main()
