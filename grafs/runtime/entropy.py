"""How far a search's α has told the ops apart: the normalised entropy of each hole's
Dirichlet mean over its active ops (read by the search's warnings and by the callbacks)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from grafs.runtime.cell import RelaxedCell

__all__ = ["normalized_entropy", "active_alpha", "hole_entropies"]


def normalized_entropy(alpha: Iterable[float]) -> float:
    """Entropy of the Dirichlet mean for the α of one hole's active ops, over log(#ops).

    The cell samples mixture weights from Dirichlet(elu(α) + 1), whose mean is the
    concentration normalised to sum 1. 1.0: the mean is uniform (the search has not yet told
    the ops apart); 0.0: one op has all the mass (and a hole with one op left is 0.0).
    """
    a = torch.as_tensor(list(alpha), dtype=torch.float64)
    if a.numel() <= 1:
        return 0.0
    conc = F.elu(a) + 1.0
    p = conc / conc.sum()
    h = -(p * p.clamp_min(1e-300).log()).sum()
    return float(h) / math.log(a.numel())


def active_alpha(cell: RelaxedCell) -> list[list[float]]:
    """Per hole, the α of its active ops (in ``cell.active_ops()`` order)."""
    active = cell.active.detach().cpu().tolist()
    out = []
    for h, a in zip(cell.space.holes, cell.alpha):
        vals = a.detach().cpu().tolist()
        out.append([v for op, v in zip(h.ops, vals) if active[cell.slot_of[(h.index, op)]]])
    return out


def hole_entropies(cell: RelaxedCell) -> list[float]:
    """Per hole, :func:`normalized_entropy` of its active ops' α."""
    return [normalized_entropy(a) for a in active_alpha(cell)]
