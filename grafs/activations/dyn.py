"""dynActivation (seeds/002): ``f(x) = base(x)·(α − β) + β·x``.

Two learnable scalars per layer: α scales the nonlinearity and β mixes in a linear path
(with α = β the layer is exactly linear, ``β·x``).  Initialised at α = 1, β = 0 so the
module starts as its base activation.

* :class:`DynActivation` wraps a base activation (``nn.Module`` or callable).
* :class:`DynTerm` is the lower-level term for a compiler that has already computed
  ``base(x)``: ``forward(base_out, x)``; same parameter names (``alpha``, ``beta``).
* :func:`dyn` is the functional form ``dyn(base_out, x, alpha, beta)``.

The result is computed in ``promote_types(base_out.dtype, float32)`` and returned in
``base_out``'s dtype, so half-precision inputs keep fp32 parameters and fp32 parameter
gradients.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from grafs.errors import GrafsError

__all__ = ["DynActivation", "DynTerm", "dyn"]


def dyn(base_out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``base_out·(alpha − beta) + beta·x``."""
    cdt = torch.promote_types(torch.promote_types(base_out.dtype, x.dtype), torch.float32)
    a = alpha.to(cdt)
    b = beta.to(cdt)
    out = base_out.to(cdt) * (a - b) + b * x.to(cdt)
    return out.to(base_out.dtype)


def _check_init(alpha_init, beta_init):
    for name, v in (("alpha_init", alpha_init), ("beta_init", beta_init)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise GrafsError(f"dynActivation: {name} must be a finite number, got {v!r}")


class _DynCore(nn.Module):
    """The scalars α, β and :meth:`forward_parts`."""

    def __init__(self, alpha_init: float = 1.0, beta_init: float = 0.0, device=None, dtype=None):
        super().__init__()
        _check_init(alpha_init, beta_init)
        factory = {"device": device, "dtype": dtype if dtype is not None else torch.float32}
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init), **factory))
        self.beta = nn.Parameter(torch.tensor(float(beta_init), **factory))

    def forward_parts(self, base_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The term with a precomputed ``base(x)``."""
        return dyn(base_out, x, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha.item():.4g}, beta={self.beta.item():.4g}"


class DynTerm(_DynCore):
    """``forward(base_out, x) = base_out·(α − β) + β·x`` with learnable scalars α, β."""

    def forward(self, base_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return dyn(base_out, x, self.alpha, self.beta)


class DynActivation(_DynCore):
    """dynActivation around ``base``: ``base(x)·(α − β) + β·x``, α = 1, β = 0 at init.

    Args:
        base: the base activation, an ``nn.Module`` or a callable on tensors.
        alpha_init, beta_init: initial α and β (defaults 1 and 0: starts as ``base``).
    """

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor],
                 alpha_init: float = 1.0, beta_init: float = 0.0, device=None, dtype=None):
        if not callable(base):
            raise GrafsError(f"DynActivation: base must be an nn.Module or a callable, got {base!r}")
        super().__init__(alpha_init, beta_init, device, dtype)
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dyn(self.base(x), x, self.alpha, self.beta)
