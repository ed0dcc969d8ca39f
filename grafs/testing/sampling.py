"""Deterministic stand-in for the cell's Dirichlet draws (tests and the search-quality study)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from grafs.runtime.cell import RelaxedCell


@contextlib.contextmanager
def mean_samples():
    """Within the block, every cell's Dirichlet draw is replaced by its mean α̃/Σα̃
    (α̃ = elu(α) + 1, differentiable in α): the search is deterministic, and DrNAS's
    sampling becomes DARTS-like mixing with the Dirichlet mean as weights."""
    orig = RelaxedCell.sample_weights

    def mean(self, n=None):
        idx = self._active_index()
        conc = F.elu(torch.cat(list(self.alpha)).index_select(0, idx.slots)) + 1.0
        sums = torch.zeros(self.num_holes, dtype=conc.dtype,
                           device=conc.device).index_add(0, idx.seg, conc)
        w = torch.zeros(len(self.slot_of), dtype=conc.dtype,
                        device=conc.device).index_put((idx.slots,), conc / sums[idx.seg])
        return w if n is None else w.expand(n, -1)

    RelaxedCell.sample_weights = mean
    try:
        yield
    finally:
        RelaxedCell.sample_weights = orig
