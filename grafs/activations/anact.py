"""ANAct: adaptive normalization of an activation function (seeds/004).

For an activation δ with pre-activation ``h``::

    δ̂(h) = (λ + 0.3·tanh(a))·(δ(h) − μ),      λ = sqrt((ρ + ρ′) / (2ρρ′))
    ρ  = E[δ(h)²] / Var[h]        (seeds/004 Eq. 5)
    ρ′ = E[δ′(h)²]                (Eq. 6)
    μ  = E[δ(h)]

``a`` is a learnable scalar initialised to 0 (the paper uses ``f(a) = 0.3·tanh(a)``
and ``a = 0`` in all experiments).  ρ, ρ′ and μ are estimated on the mini-batch (all
elements of ``h``: one set of statistics per module), computed under ``no_grad`` and
treated as constants in the backward pass, as the paper prescribes.

Running statistics (buffers ``running_rho``, ``running_rho_prime``, ``running_mean``,
``num_batches_tracked``), seeds/004 Eq. 16-18, with ``m = momentum`` weighting the *new*
batch (the same convention as ``torch.nn.BatchNorm``)::

    t = 0:  ρ ← ρ_M,  ρ′ ← ρ′_M,  μ ← μ_M
    else:   ρ ← m·ρ_M + (1 − m)·ρ     if L·ρ < ρ_M < U·ρ, else ρ unchanged   (same for ρ′)
            μ ← m·μ_M + (1 − m)·μ     (no outlier test for μ, as in Eq. 16)

A batch estimate that is not finite (e.g. ``Var[h] = 0``) is ignored.  The paper gives
no t = 0 case for μ; we initialise μ from the first batch like ρ and ρ′ so that all three
start unbiased.

Train/eval: in training mode the statistics of the current batch are folded into the
running buffers first and the *updated running values* are then used in the output.
This is our reading of seeds/004 §2.2: "In order to control the noise, ρ, ρ′ and μ
are updated by a momentum parameter m based on history and current mini-batch" — the
smoothing exists to denoise the values the forward pass uses, so unlike BatchNorm the
training output does not use the raw batch estimates (the very first batch, t = 0,
uses its own estimates).  Eval mode uses the buffers as they are and updates nothing.

δ′: if ``derivative`` is given it is called on the detached input.  Otherwise δ′ is
computed in eager mode with ``torch.autograd.grad(δ(h̃).sum(), h̃)`` on a detached copy
``h̃`` of the input (so ``base`` must be elementwise; it costs one extra forward and
backward of δ, in training mode only).  While being traced by ``torch.compile`` (where
``torch.autograd.grad`` is not traceable) it uses forward-mode AD,
``torch.func.jvp(δ, (h̃,), (ones,))``, which gives the same elementwise derivative for
any δ built from ops with forward-mode support.  Eval mode does not need δ′.

Defaults and why (the paper does not state its values of m, L, U):

* ``momentum=0.1`` — the paper's update has BatchNorm's form and its purpose (denoise
  per-batch estimates); 0.1 is BatchNorm's default, an average over ~10 batches.
* ``lower=0.5``, ``upper=2.0`` — a batch estimate more than a factor 2 away from the
  running value is treated as an outlier.  ρ and ρ′ are ratios of second moments that
  move by a few percent per step in normal training, while a degenerate batch (tiny,
  constant, all-negative for ReLU) can be off by orders of magnitude; a factor-2 band
  keeps the former and rejects the latter.  Caveat: a genuine jump of more than 2× in
  one step is never accepted (call :meth:`reset_running_stats` in that case).
* ``scale=0.3`` — the bounded adjustment ``f(a) = 0.3·tanh(a)`` of the paper.

The lower-level entry point for a compiler that already has δ(h) and δ′(h) (e.g. from
a symbolic derivative) is :class:`ANActTerm` (``forward(h, delta, delta_prime)``), or
:meth:`ANAct.forward_parts` with the same arguments; both share the buffers/parameter
layout and the state-dict keys of :class:`ANAct`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from grafs.errors import GrafsError

__all__ = ["ANAct", "ANActTerm", "anact_batch_stats", "anact_lambda"]

_TINY = 1e-12


def anact_batch_stats(h: torch.Tensor, delta: torch.Tensor, delta_prime: torch.Tensor | None):
    """Batch estimates (ρ_M, ρ′_M, μ_M) as fp32 0-d tensors, without gradient.

    ``ρ_M = mean(δ²)/Var(h)`` (population variance), ``ρ′_M = mean(δ′²)``,
    ``μ_M = mean(δ)``.  ``delta_prime=None`` gives ρ′_M = NaN (ignored by the update).
    """
    with torch.no_grad():
        hf = h.detach().float()
        df = delta.detach().float()
        var_h = hf.var(correction=0)
        rho = (df * df).mean() / var_h
        mu = df.mean()
        if delta_prime is None:
            rho_p = torch.full_like(mu, float("nan"))
        else:
            dp = delta_prime.detach().float()
            rho_p = (dp * dp).mean()
    return rho, rho_p, mu


def anact_lambda(rho: torch.Tensor, rho_prime: torch.Tensor) -> torch.Tensor:
    """λ = sqrt((ρ + ρ′)/(2ρρ′)) (seeds/004 Eq. 13), with ρ, ρ′ clamped away from 0."""
    r = rho.clamp_min(_TINY)
    rp = rho_prime.clamp_min(_TINY)
    return torch.sqrt((r + rp) / (2.0 * r * rp))


def _check_hparams(momentum, lower, upper, scale):
    for name, v in (("momentum", momentum), ("lower", lower), ("upper", upper), ("scale", scale)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise GrafsError(f"ANAct: {name} must be a finite number, got {v!r}")
    if not 0.0 < momentum <= 1.0:
        raise GrafsError(f"ANAct: momentum must be in (0, 1], got {momentum!r}")
    if not 0.0 <= lower < 1.0 < upper:
        raise GrafsError(
            f"ANAct: need 0 ≤ lower < 1 < upper for the outlier band (lower·prev, upper·prev), "
            f"got lower={lower!r}, upper={upper!r}")
    if scale < 0:
        raise GrafsError(f"ANAct: scale must be ≥ 0, got {scale!r}")


class _ANActCore(nn.Module):
    """Parameter ``a``, the running buffers and :meth:`forward_parts`."""

    def __init__(self, momentum: float = 0.1, lower: float = 0.5, upper: float = 2.0,
                 scale: float = 0.3, device=None, dtype=None):
        super().__init__()
        _check_hparams(momentum, lower, upper, scale)
        self.momentum = float(momentum)
        self.lower = float(lower)
        self.upper = float(upper)
        self.scale = float(scale)
        self.a = nn.Parameter(torch.zeros((), device=device,
                                          dtype=dtype if dtype is not None else torch.float32))
        f32 = {"device": device, "dtype": torch.float32}
        self.register_buffer("running_rho", torch.ones((), **f32))
        self.register_buffer("running_rho_prime", torch.ones((), **f32))
        self.register_buffer("running_mean", torch.zeros((), **f32))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long, device=device))

    @torch.no_grad()
    def reset_running_stats(self) -> None:
        self.running_rho.fill_(1.0)
        self.running_rho_prime.fill_(1.0)
        self.running_mean.zero_()
        self.num_batches_tracked.zero_()

    @torch.no_grad()
    def _update(self, rho_m, rho_p_m, mu_m) -> None:
        """seeds/004 Eq. 16-18, tensor-only (no host sync, traceable)."""
        m = self.momentum
        first = self.num_batches_tracked == 0

        def upd(run, new, outlier_test):
            ok = torch.isfinite(new)
            blend = m * new + (1.0 - m) * run
            if outlier_test:
                inside = (new > self.lower * run) & (new < self.upper * run)
                # a non-positive running value (cannot bound anything) accepts the batch value
                inside = inside | (run <= 0)
                cand = torch.where(first, new, torch.where(inside, blend, run))
            else:
                cand = torch.where(first, new, blend)
            run.copy_(torch.where(ok, cand, run))

        upd(self.running_rho, rho_m, True)
        upd(self.running_rho_prime, rho_p_m, True)
        upd(self.running_mean, mu_m, False)
        self.num_batches_tracked.add_(1)

    def forward_parts(self, h: torch.Tensor, delta: torch.Tensor,
                      delta_prime: torch.Tensor | None = None) -> torch.Tensor:
        """δ̂ from precomputed ``delta = δ(h)`` and ``delta_prime = δ′(h)``.

        In training mode the batch statistics update the running buffers (``delta_prime``
        is then required); the output always uses the (updated) buffers.  Gradients flow
        through ``delta`` and ``a`` only.
        """
        if self.training:
            if delta_prime is None:
                raise GrafsError(
                    "ANAct.forward_parts: delta_prime (δ′(h)) is required in training mode "
                    "to estimate ρ′")
            if delta.shape != h.shape or delta_prime.shape != h.shape:
                raise GrafsError(
                    f"ANAct.forward_parts: h, delta and delta_prime must have the same shape, "
                    f"got {tuple(h.shape)}, {tuple(delta.shape)}, {tuple(delta_prime.shape)}")
            self._update(*anact_batch_stats(h, delta, delta_prime))
        rho = self.running_rho.detach()
        rho_p = self.running_rho_prime.detach()
        mu = self.running_mean.detach()
        cdt = torch.promote_types(delta.dtype, torch.float32)
        gain = anact_lambda(rho, rho_p).to(cdt) + self.scale * torch.tanh(self.a.to(cdt))
        return (gain * (delta.to(cdt) - mu.to(cdt))).to(delta.dtype)

    @property
    def lambda_(self) -> float:
        """λ from the running buffers."""
        return float(anact_lambda(self.running_rho, self.running_rho_prime))

    def extra_repr(self) -> str:
        return (f"momentum={self.momentum}, lower={self.lower}, upper={self.upper}, "
                f"scale={self.scale}")


class ANActTerm(_ANActCore):
    """The ANAct normalization as a term: ``forward(h, delta, delta_prime)``.

    For a compiler that evaluates δ(h) and its symbolic derivative δ′(h) itself.
    Same arguments, parameter and buffers as :class:`ANAct` (without ``base``).
    """

    def forward(self, h: torch.Tensor, delta: torch.Tensor,
                delta_prime: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_parts(h, delta, delta_prime)


class ANAct(_ANActCore):
    """Adaptively normalized activation ``(λ + 0.3·tanh(a))·(δ(h) − μ)`` (see module doc).

    Args:
        base: the activation δ, an ``nn.Module`` or a callable on tensors (elementwise).
        derivative: optional callable computing δ′ elementwise; default: autograd.
        momentum: weight of the new batch in the running statistics (default 0.1).
        lower, upper: outlier band factors L, U for ρ and ρ′ (defaults 0.5, 2.0).
        scale: bound of the learnable adjustment ``scale·tanh(a)`` (default 0.3).
    """

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor],
                 derivative: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 momentum: float = 0.1, lower: float = 0.5, upper: float = 2.0,
                 scale: float = 0.3, device=None, dtype=None):
        if not callable(base):
            raise GrafsError(f"ANAct: base must be an nn.Module or a callable, got {base!r}")
        if derivative is not None and not callable(derivative):
            raise GrafsError(f"ANAct: derivative must be callable or None, got {derivative!r}")
        super().__init__(momentum, lower, upper, scale, device, dtype)
        self.base = base  # registered as a submodule when it is an nn.Module
        self.derivative = derivative

    def delta_prime(self, h: torch.Tensor) -> torch.Tensor:
        """δ′(h) on a detached copy of ``h`` (no graph is kept)."""
        hd = h.detach()
        if self.derivative is not None:
            with torch.no_grad():
                return self.derivative(hd)
        if torch.compiler.is_compiling():
            _, tangent = torch.func.jvp(self.base, (hd,), (torch.ones_like(hd),))
            return tangent.detach()
        hd = hd.clone().requires_grad_(True)
        with torch.enable_grad():
            y = self.base(hd)
            (g,) = torch.autograd.grad(y.sum(), hd, allow_unused=True)
        if g is None:  # δ does not depend on its input
            g = torch.zeros_like(hd)
        return g.detach()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        delta = self.base(h)
        dp = self.delta_prime(h) if self.training else None
        return self.forward_parts(h, delta, dp)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if not isinstance(self.base, nn.Module):
            extra = f"base={getattr(self.base, '__name__', self.base)!r}, " + extra
        return extra
