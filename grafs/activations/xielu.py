"""xIELU and xIPReLU (seeds/003, Appendix A.3 and A.6).

xIELU::

    f(x) = αp·x² + β·x                          x > 0
    f(x) = αn·(expm1(min(x, ε)) − x) + β·x      x ≤ 0

    αp = softplus(a_p),  αn = β + softplus(a_n),  β = 0.5,  ε = −1e-6

xIPReLU is the same for x > 0 and ``αn·x² + β·x`` for x ≤ 0, with ``αn = softplus(a_n)``.
``a_p`` and ``a_n`` are the trainable raw parameters (one scalar each, per module);
they are initialised to the inverse softplus of the requested αp, αn (0.8 by default;
for xIELU ``a_n = softplus⁻¹(0.8 − β)``).

The parameter and buffer names and shapes (``alpha_p``/``alpha_n`` of shape ``(1,)``,
buffers ``beta`` and ``eps``) are those of Hugging Face transformers'
``XIELUActivation``, so state dicts load both ways.

Two evaluation paths compute the same function:

* ``fused=True`` (default): a custom :class:`torch.autograd.Function` that saves only the
  input and the raw scalar parameters, and whose backward computes the gradients for
  ``x``, ``a_p`` and ``a_n`` in one pass.  Half-precision inputs are computed in fp32
  internally and the parameter gradients are reduced in fp32 (then cast to the
  parameter's dtype, fp32 unless the module itself was cast).  In eager mode this saves
  activation memory (one saved tensor instead of a dozen intermediates) and runs fewer,
  in-place passes than the reference (faster in eager mode, see bench/families.py);
  under ``torch.compile`` the plain formula is traced instead (see :func:`xielu`), and
  Inductor fuses its forward and its backward.  A double backward (``create_graph=True``)
  differentiates the reference formula, so higher-order gradients work too.
* ``fused=False``: the appendix code written with plain differentiable torch ops
  (the reference used by the tests and the benchmark).

Both paths compute in ``promote_types(x.dtype, float32)`` and return ``x.dtype``.

Note on the ε clamp (faithful to the reference code, kept on purpose): for
``ε < x ≤ 0`` the negative branch is linear with slope ``β − αn``, so the derivative
jumps from ≈β to ``β − αn`` at ``x = ε`` and the function steps by ``αn·expm1(ε)``
(≈ −8e-7 at init) at ``x = 0``.  At ``x == ε`` exactly the gradient follows
``torch.minimum``'s convention (half of the exponential term).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from grafs.errors import GrafsError

__all__ = [
    "XIELU",
    "XIPReLU",
    "xielu",
    "xiprelu",
    "xielu_reference",
    "xiprelu_reference",
    "inverse_softplus",
]


def inverse_softplus(value: float) -> float:
    """softplus⁻¹(v) = log(expm1(v)), computed in float64 (v > 0)."""
    if not (value > 0 and math.isfinite(value)):
        raise GrafsError(f"inverse_softplus needs a finite value > 0, got {value!r}")
    if value > 30.0:  # log(expm1(v)) = v + log1p(-exp(-v)) ≈ v
        return value + math.log1p(-math.exp(-value))
    return math.log(math.expm1(value))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


# --------------------------------------------------------------------------- reference
def xielu_reference(x, alpha_p, alpha_n, beta, eps):
    """Plain-torch xIELU (differentiable through autograd); ``alpha_*`` are raw params."""
    cdt = _compute_dtype(x)
    xc = x.to(cdt)
    beta = torch.as_tensor(beta, dtype=cdt, device=x.device)
    eps = torch.as_tensor(eps, dtype=cdt, device=x.device)
    a_p = F.softplus(alpha_p.to(cdt))
    a_n = beta + F.softplus(alpha_n.to(cdt))
    out = torch.where(
        xc > 0,
        a_p * xc * xc + beta * xc,
        a_n * torch.expm1(torch.min(xc, eps)) - a_n * xc + beta * xc,
    )
    return out.to(x.dtype)


def xiprelu_reference(x, alpha_p, alpha_n, beta):
    """Plain-torch xIPReLU (differentiable through autograd); ``alpha_*`` are raw params."""
    cdt = _compute_dtype(x)
    xc = x.to(cdt)
    beta = torch.as_tensor(beta, dtype=cdt, device=x.device)
    a_p = F.softplus(alpha_p.to(cdt))
    a_n = F.softplus(alpha_n.to(cdt))
    out = torch.where(xc > 0, a_p * xc * xc + beta * xc, a_n * xc * xc + beta * xc)
    return out.to(x.dtype)


# --------------------------------------------------------------------------- fused
def _reduce_to(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    return grad.reshape(param.shape).to(param.dtype)


def _grads_of_reference(ctx, reference, grad_out, *inputs):
    """Backward through the plain-torch formula, differentiable again (create_graph)."""
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i]]
    with torch.enable_grad():
        y = reference(*inputs)
        grads = torch.autograd.grad(y, [inputs[i] for i in wanted], grad_out,
                                    create_graph=True, allow_unused=True)
    out = [None] * len(inputs)
    for i, gr in zip(wanted, grads):
        out[i] = gr if gr is not None else torch.zeros_like(inputs[i])
    return tuple(out)


# The Functions below work on fresh temporaries in place (never on their inputs) to keep the
# number of passes and allocations low in eager mode (under torch.compile see xielu() below).
# A double backward (create_graph=True) goes through the reference formula instead.
class _XIELUFunction(torch.autograd.Function):
    """Fused xIELU: saves (x, a_p, a_n, beta, eps); one backward pass for all grads."""

    @staticmethod
    def forward(ctx, x, alpha_p, alpha_n, beta, eps):
        ctx.save_for_backward(x, alpha_p, alpha_n, beta, eps)
        cdt = _compute_dtype(x)
        xc = x.to(cdt)
        b = beta.to(cdt)
        a_p = F.softplus(alpha_p.to(cdt))
        a_n = b + F.softplus(alpha_n.to(cdt))
        neg = torch.minimum(xc, eps.to(cdt))
        neg.expm1_().sub_(xc).mul_(a_n)                  # αn·(expm1(min(x, ε)) − x)
        out = xc * a_p
        out.mul_(xc)                                     # αp·x²
        out = torch.where(xc > 0, out, neg, out=out)
        out.addcmul_(xc, b)                              # + β·x
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, alpha_p, alpha_n, beta, eps = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiate the reference formula
            return _grads_of_reference(ctx, xielu_reference, grad_out, x, alpha_p, alpha_n, beta, eps)
        cdt = _compute_dtype(x)
        xc = x.to(cdt)
        g = grad_out.to(cdt)
        b = beta.to(cdt)
        e = eps.to(cdt)
        ap_raw = alpha_p.to(cdt)
        an_raw = alpha_n.to(cdt)
        a_p = F.softplus(ap_raw)
        a_n = b + F.softplus(an_raw)
        pos = xc > 0
        em1 = torch.minimum(xc, e).expm1_()              # expm1(min(x, ε))
        gx = ga_p = ga_n = None
        if ctx.needs_input_grad[0]:
            # d/dx expm1(min(x, ε)) = exp(x)·w with w = 1 below ε, 1/2 at ε (torch.minimum's
            # tie rule), 0 above
            w = (e - xc).sign_().add_(1.0).mul_(0.5)
            dneg = (em1 + 1.0).mul_(w).sub_(1.0).mul_(a_n)
            dpos = xc * (2.0 * a_p)
            gx = torch.where(pos, dpos, dneg).add_(b).mul_(g).to(x.dtype)
        if ctx.needs_input_grad[1]:
            q = torch.where(pos, xc, 0.0)
            ga_p = _reduce_to(q.mul_(xc).mul_(g).sum() * torch.sigmoid(ap_raw), alpha_p)
        if ctx.needs_input_grad[2]:
            r = em1.sub_(xc).masked_fill_(pos, 0.0).mul_(g)
            ga_n = _reduce_to(r.sum() * torch.sigmoid(an_raw), alpha_n)
        return gx, ga_p, ga_n, None, None


class _XIPReLUFunction(torch.autograd.Function):
    """Fused xIPReLU: saves (x, a_p, a_n, beta); one backward pass for all grads."""

    @staticmethod
    def forward(ctx, x, alpha_p, alpha_n, beta):
        ctx.save_for_backward(x, alpha_p, alpha_n, beta)
        cdt = _compute_dtype(x)
        xc = x.to(cdt)
        a = torch.where(xc > 0, F.softplus(alpha_p.to(cdt)), F.softplus(alpha_n.to(cdt)))
        out = a.mul_(xc).add_(beta.to(cdt)).mul_(xc)     # (α·x + β)·x
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, alpha_p, alpha_n, beta = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiate the reference formula
            return _grads_of_reference(ctx, xiprelu_reference, grad_out, x, alpha_p, alpha_n, beta)
        cdt = _compute_dtype(x)
        xc = x.to(cdt)
        g = grad_out.to(cdt)
        ap_raw = alpha_p.to(cdt)
        an_raw = alpha_n.to(cdt)
        pos = xc > 0
        gx = ga_p = ga_n = None
        if ctx.needs_input_grad[0]:
            a = torch.where(pos, F.softplus(ap_raw), F.softplus(an_raw))
            gx = a.mul_(xc).mul_(2.0).add_(beta.to(cdt)).mul_(g).to(x.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gx2 = g * xc
            gx2.mul_(xc)
            if ctx.needs_input_grad[1]:
                ga_p = _reduce_to(torch.where(pos, gx2, 0.0).sum() * torch.sigmoid(ap_raw), alpha_p)
            if ctx.needs_input_grad[2]:
                ga_n = _reduce_to(gx2.masked_fill_(pos, 0.0).sum() * torch.sigmoid(an_raw), alpha_n)
        return gx, ga_p, ga_n, None


# Under torch.compile the plain formula is traced instead of the Function: Inductor fuses its
# forward and backward just as well, AOTAutograd derives the gradients, and Dynamo's tracing of
# autograd.Functions is version-dependent (torch 2.11 delivered a zero grad_out to the backward
# of a Function whose forward returns an in-place-mutated temporary: silently wrong gradients).
def xielu(x, alpha_p, alpha_n, beta, eps):
    """Fused xIELU on raw parameters (tensors; ``beta``/``eps`` 0-d tensors)."""
    if torch.compiler.is_compiling():
        return xielu_reference(x, alpha_p, alpha_n, beta, eps)
    return _XIELUFunction.apply(x, alpha_p, alpha_n, beta, eps)


def xiprelu(x, alpha_p, alpha_n, beta):
    """Fused xIPReLU on raw parameters (tensors; ``beta`` a 0-d tensor)."""
    if torch.compiler.is_compiling():
        return xiprelu_reference(x, alpha_p, alpha_n, beta)
    return _XIPReLUFunction.apply(x, alpha_p, alpha_n, beta)


# --------------------------------------------------------------------------- modules
def _check_float(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GrafsError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise GrafsError(f"{name} must be finite, got {value!r}")
    return v


class _XBase(nn.Module):
    def __init__(self, a_p_raw: float, a_n_raw: float, beta: float, eps: float,
                 fused: bool, device, dtype):
        super().__init__()
        if not isinstance(fused, bool):
            raise GrafsError(f"fused must be True or False, got {fused!r}")
        factory = {"device": device, "dtype": dtype if dtype is not None else torch.float32}
        self.alpha_p = nn.Parameter(torch.full((1,), a_p_raw, **factory))
        self.alpha_n = nn.Parameter(torch.full((1,), a_n_raw, **factory))
        self.register_buffer("beta", torch.tensor(beta, **factory))
        self.register_buffer("eps", torch.tensor(eps, **factory))
        self.fused = fused

    def extra_repr(self) -> str:
        return (f"alpha_p={self.alpha_p_value:.4g}, alpha_n={self.alpha_n_value:.4g}, "
                f"beta={float(self.beta):g}, fused={self.fused}")


class XIELU(_XBase):
    """xIELU activation (seeds/003, Appendix A.3) with trainable αp, αn.

    Args:
        alpha_p_init: initial αp (> 0), default 0.8.
        alpha_n_init: initial αn (> beta), default 0.8.
        beta: fixed β, default 0.5.
        eps: the upper clamp ε of the exponential argument (≤ 0), default −1e-6.
        fused: use the fused autograd Function (default) or the plain-torch reference.
    """

    def __init__(self, alpha_p_init: float = 0.8, alpha_n_init: float = 0.8,
                 beta: float = 0.5, eps: float = -1e-6, fused: bool = True,
                 device=None, dtype=None):
        alpha_p_init = _check_float("alpha_p_init", alpha_p_init)
        alpha_n_init = _check_float("alpha_n_init", alpha_n_init)
        beta = _check_float("beta", beta)
        eps = _check_float("eps", eps)
        if alpha_p_init <= 0:
            raise GrafsError(f"XIELU: alpha_p_init must be > 0 (αp = softplus(a_p)), got {alpha_p_init}")
        if alpha_n_init <= beta:
            raise GrafsError(
                f"XIELU: alpha_n_init must be > beta (αn = beta + softplus(a_n)), "
                f"got alpha_n_init={alpha_n_init}, beta={beta}")
        if eps > 0:
            raise GrafsError(f"XIELU: eps must be ≤ 0 (it clamps negative inputs), got {eps}")
        super().__init__(inverse_softplus(alpha_p_init), inverse_softplus(alpha_n_init - beta),
                         beta, eps, fused, device, dtype)

    @property
    def alpha_p_value(self) -> float:
        return float(F.softplus(self.alpha_p.detach().float()))

    @property
    def alpha_n_value(self) -> float:
        return float(self.beta.float() + F.softplus(self.alpha_n.detach().float()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return xielu(x, self.alpha_p, self.alpha_n, self.beta, self.eps)
        return xielu_reference(x, self.alpha_p, self.alpha_n, self.beta, self.eps)


class XIPReLU(_XBase):
    """xIPReLU activation (seeds/003, Appendix A.6) with trainable αp, αn.

    Args:
        alpha_p_init: initial αp (> 0), default 0.8.
        alpha_n_init: initial αn (> 0), default 0.8.
        beta: fixed β, default 0.5.
        fused: use the fused autograd Function (default) or the plain-torch reference.
    """

    def __init__(self, alpha_p_init: float = 0.8, alpha_n_init: float = 0.8,
                 beta: float = 0.5, fused: bool = True, device=None, dtype=None):
        alpha_p_init = _check_float("alpha_p_init", alpha_p_init)
        alpha_n_init = _check_float("alpha_n_init", alpha_n_init)
        beta = _check_float("beta", beta)
        if alpha_p_init <= 0 or alpha_n_init <= 0:
            raise GrafsError(
                f"XIPReLU: alpha_p_init and alpha_n_init must be > 0 (softplus-parametrised), "
                f"got {alpha_p_init}, {alpha_n_init}")
        super().__init__(inverse_softplus(alpha_p_init), inverse_softplus(alpha_n_init),
                         beta, 0.0, fused, device, dtype)
        # xIPReLU has no ε; drop the buffer so the state dict is exactly {alpha_p, alpha_n, beta}.
        del self.eps

    @property
    def alpha_p_value(self) -> float:
        return float(F.softplus(self.alpha_p.detach().float()))

    @property
    def alpha_n_value(self) -> float:
        return float(F.softplus(self.alpha_n.detach().float()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return xiprelu(x, self.alpha_p, self.alpha_n, self.beta)
        return xiprelu_reference(x, self.alpha_p, self.alpha_n, self.beta)
