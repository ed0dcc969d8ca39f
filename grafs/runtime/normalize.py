"""Op-output normalisation for a search (seeds/001: elementary functions "operate on different
scales, making it challenging to rank their significance based on their coefficients").

With ``SearchSpace(..., normalize=True)`` each candidate op's mixture weight is multiplied by
a fixed constant 1/RMS(op) measured once on standard-normal inputs (binary ops: two
independent ones; γ at the mean of its initialisation; bounded ops clipped as in the search).
exp, cube or sinh then no longer dominate a mixture by their size, nor sigmoid or γ fade by
theirs. The discretized formula keeps the chosen op's constant, so it is the function the
search evaluated. The constants are fixed, not statistics of the data: a search stays
deterministic and resumable, and the formula does not depend on the batch.
"""
from __future__ import annotations

import functools
import math

import torch

from grafs.grammar import expr as E
from grafs.ops import SEARCH_OPS

_SAMPLES = 1 << 16


@functools.lru_cache(maxsize=None)
def op_scale(op_name: str, ell: float | None) -> float:
    """1 / RMS of the search op ``op_name`` on N(0, 1) inputs (1.0 for an op that is ~0)."""
    from grafs.compiler.eager import run_expr
    spec = SEARCH_OPS[op_name]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, _SAMPLES, generator=g, dtype=torch.float64)
    args = [E.var()] if spec.kind == "unary" else [E.var(), E.param("grafs_b", 0.0)]
    ex = spec.build(args, [E.const(gi.mean) for gi in spec.gammas], ell)
    with torch.no_grad():
        v = run_expr(ex, z[0], {"grafs_b": z[1]})
    rms = float(torch.sqrt(torch.mean(v.double() ** 2)))
    return 1.0 / rms if math.isfinite(rms) and rms > 1e-6 else 1.0


def slot_scales(space, slot_of: dict[tuple[int, str], int]) -> torch.Tensor:
    """The constant of every slot of a relaxed cell, in slot order."""
    ell = space.ell if space.clip else None
    out = torch.ones(len(slot_of))
    for (_, op_name), k in slot_of.items():
        out[k] = op_scale(op_name, ell)
    return out
