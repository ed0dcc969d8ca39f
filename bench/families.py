"""Time the trainable activation families against native SiLU, side by side in one run.

    python -m bench.families [--numel N] [--repeats R] [--warmup W] [--no-compile]
                             [--device D] [--threads T]

For every family it times forward+backward (training mode) on one fp32 tensor of
``--numel`` elements (2M by default), on CUDA when available, else CPU:

* ``eager``     — the module in eager PyTorch (for xIELU/xIPReLU: the plain-torch
                  reference path, ``fused=False``);
* ``fused``     — the fused custom autograd Function (xIELU/xIPReLU), or the variant
                  that is given its derivative (ANAct with ``derivative=``);
* ``compiled``  — ``torch.compile(module, fullgraph=True)`` (Inductor), compile time
                  excluded;

and, in the same run, native ``F.silu`` (the ``ratio`` column divides by it), ``F.gelu``
and ``F.relu``.  A second table times the forward pass alone in ``eval()`` mode (PWLU's
``x·S[idx] + O[idx]`` inference path, ANAct's running statistics).

Times are the median over ``--repeats`` timed calls after ``--warmup`` untimed ones.
Nothing here asserts a timing.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.timing import round_robin
from grafs.activations.anact import ANAct
from grafs.activations.dyn import DynActivation
from grafs.activations.pwlu import PWLU
from grafs.activations.xielu import XIELU, XIPReLU


def time_round_robin(fns, device, warmup, repeats):
    """Median ms of each function, interleaved (:func:`bench.timing.round_robin`)."""
    return [t * 1e3 for t in round_robin(fns, device, warmup, repeats)]


def fwd_bwd_step(fn, params, x, g):
    def step():
        x.grad = None
        for p in params:
            p.grad = None
        fn(x).backward(g)
    return step


def fwd_step(fn, x):
    def step():
        with torch.no_grad():
            fn(x)
    return step


def silu_prime(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def families(device):
    """(family, variant, module factory) rows; a factory returns a module on ``device``."""
    def pwlu_layer():
        m = PWLU(num_intervals=16, phase1_steps=0)
        with torch.no_grad():
            m.points.add_(0.05 * torch.randn(m.points.shape))
        return m

    rows = [
        ("xIELU", "eager", lambda: XIELU(fused=False)),
        ("xIELU", "fused", lambda: XIELU(fused=True)),
        ("xIPReLU", "eager", lambda: XIPReLU(fused=False)),
        ("xIPReLU", "fused", lambda: XIPReLU(fused=True)),
        ("PWLU (layer, N=16)", "eager", pwlu_layer),
        ("ANAct(SiLU)", "eager", lambda: ANAct(nn.SiLU())),
        ("ANAct(SiLU)", "fused", lambda: ANAct(nn.SiLU(), derivative=silu_prime)),
        ("dyn(SiLU)", "eager", lambda: DynActivation(nn.SiLU())),
    ]
    return [(f, v, (lambda mk=mk: mk().to(device))) for f, v, mk in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for CPU runs (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    torch.manual_seed(0)
    x = (torch.randn(args.numel, device=device) * 1.5).requires_grad_(True)
    g = torch.randn(args.numel, device=device)
    xe = x.detach()

    rows = []        # (family, variant, callable)
    for name, fn in (("native F.silu", F.silu), ("native F.gelu", F.gelu), ("native F.relu", F.relu)):
        rows.append((name, "-", fn))
    by_family = {}
    for family, variant, make in families(device):
        by_family.setdefault(family, []).append((variant, make))
    for family, variants in by_family.items():
        for variant, make in variants:
            rows.append((family, variant, make()))
        if not args.no_compile:
            make = variants[-1][1]           # the fused variant where there is one
            try:
                compiled = torch.compile(make(), fullgraph=True)
                fwd_bwd_step(compiled, [], x, g)()          # compile the training graphs now
                rows.append((family, "compiled", compiled))
            except Exception as exc:  # e.g. no C++ compiler for Inductor on this machine
                print(f"[compile of {family} failed: {type(exc).__name__}: {str(exc)[:120]}]")

    def set_mode(train):
        for _, _, m in rows:
            if isinstance(m, nn.Module):
                m.train(train)

    set_mode(True)
    train_steps = [fwd_bwd_step(m, list(m.parameters()) if isinstance(m, nn.Module) else [], x, g)
                   for _, _, m in rows]
    t_train = time_round_robin(train_steps, device, args.warmup, args.repeats)
    set_mode(False)
    t_eval = time_round_robin([fwd_step(m, xe) for _, _, m in rows], device, args.warmup, args.repeats)
    results = [(f, v, tt, te) for (f, v, _), tt, te in zip(rows, t_train, t_eval)]

    silu_train, silu_eval = results[0][2], results[0][3]
    print(f"device={device}  numel={args.numel}  dtype=float32  threads={torch.get_num_threads()}  "
          f"torch={torch.__version__}  median of {args.repeats} (warmup {args.warmup})")
    header = f"{'family':<20} {'variant':<9} {'fwd+bwd ms':>11} {'ratio':>7}   {'eval fwd ms':>11} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for family, variant, tt, te in results:
        print(f"{family:<20} {variant:<9} {tt:>11.2f} {tt / silu_train:>7.2f}   {te:>11.2f} {te / silu_eval:>7.2f}")
    print("ratio = time / native F.silu time measured in this run (same tensor, same mode).")


if __name__ == "__main__":
    main()
