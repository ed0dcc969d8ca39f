"""The losses a search and the built-in tasks share: cross-entropy, mean squared error, and
the search's default that picks between them by the targets' type."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; (B, C) vs (B,) or sequence logits (B, T, V) vs (B, T)."""
    if logits.dim() == target.dim() + 1 and logits.dim() > 2:
        logits = logits.reshape(-1, logits.shape[-1])
        target = target.reshape(-1)
    return F.cross_entropy(logits.float(), target)


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all outputs (computed in fp32; a (B, 1) output against (B,)
    targets is fine)."""
    return torch.mean((out.float().reshape(target.shape) - target.float()) ** 2)


def default_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer (class) targets; mean squared error for floating-point ones
    (regression, as grafs.evaluate: cross-entropy over a one-unit output is 0 whatever the
    output, so a regression search would learn nothing). Soft labels: pass your loss_fn."""
    return mse(out, y) if y.is_floating_point() else cross_entropy(out, y)
