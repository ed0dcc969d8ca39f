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


def check_first_pass(model, xb: torch.Tensor, yb: torch.Tensor, loss_fn=None,
                     device: torch.device | None = None) -> None:
    """A forward and loss of ``model`` on the examples ``xb``, ``yb`` (no gradient), before any
    training: inputs or targets the model or loss cannot take (a dtype, a shape) are one
    GrafsError naming them, not torch's message from inside a first step, or the same failure
    in every run of an evaluation."""
    from grafs.errors import GrafsError
    dev = device or torch.device("cpu")
    try:
        with torch.no_grad():
            model.to(dev).eval()
            loss = (loss_fn or default_loss)(model(xb.to(dev)), yb.to(dev))
    except Exception as err:      # anything the user's model or loss raises
        raise GrafsError(f"your model and data do not train: a forward and loss on {len(xb)} "
                         f"training examples (inputs {tuple(xb.shape)} {xb.dtype}, targets "
                         f"{tuple(yb.shape)} {yb.dtype}) failed with {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise GrafsError(f"the loss must be one number (a one-element tensor), got "
                         f"{type(loss).__name__}" + (f" of shape {tuple(loss.shape)}"
                                                     if isinstance(loss, torch.Tensor) else ""))
