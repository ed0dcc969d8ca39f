"""Batched DrNAS sampling: one Dirichlet draw per hole, for every hole in a handful of kernels.

``torch.distributions.Dirichlet`` per hole costs a Distribution object, argument validation
(``.all()`` on the concentration: a device sync) and several small kernels per hole. Here the
active slots of all holes form one flat vector: one batched gamma draw, per-hole sums by one
``index_add``, a division. The distribution is the same (a Dirichlet is a vector of independent
Gamma(α_i, 1) draws divided by their sum), and so is the gradient: the backward is the implicit
reparameterisation gradient that ``Dirichlet.rsample`` uses (``torch._dirichlet_grad`` with the
hole's total concentration), applied per hole. A hole with one active op samples the constant 1
with gradient 0, as before.
"""
from __future__ import annotations

import torch


class _SegmentedDirichlet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, conc, seg, n_seg, single):
        gam = torch._standard_gamma(conc)
        tiny = torch.finfo(gam.dtype).tiny
        sums = torch.zeros(n_seg, dtype=gam.dtype, device=gam.device).index_add_(0, seg, gam)
        x = gam / sums.clamp_min(tiny).index_select(0, seg)
        x = torch.where(single, torch.ones_like(x), x)
        ctx.save_for_backward(x, conc, seg, single)
        ctx.n_seg = n_seg
        return x

    @staticmethod
    def backward(ctx, grad):
        x, conc, seg, single = ctx.saved_tensors
        n_seg = ctx.n_seg
        zeros = torch.zeros(n_seg, dtype=conc.dtype, device=conc.device)
        total = zeros.index_add(0, seg, conc).index_select(0, seg)
        # _dirichlet_grad wants a total strictly above the concentration: harmless placeholder
        # for one-op holes, whose gradient is 0 anyway
        total = torch.where(single, conc + 1.0, total)
        dx = torch._dirichlet_grad(x, conc, total)
        xg = zeros.index_add(0, seg, x * grad).index_select(0, seg)
        g = dx * (grad - xg)
        return torch.where(single, torch.zeros_like(g), g), None, None, None


def segmented_dirichlet(conc: torch.Tensor, seg: torch.Tensor, n_seg: int,
                        single: torch.Tensor) -> torch.Tensor:
    """A Dirichlet sample per segment of ``conc`` (flat, > 0), differentiable w.r.t. ``conc``.

    ``seg[i]``: the segment (hole) of entry i, in ``[0, n_seg)``; ``single[i]``: entry i is
    alone in its segment (it samples exactly 1). No host-device synchronisation."""
    return _SegmentedDirichlet.apply(conc, seg, n_seg, single)
