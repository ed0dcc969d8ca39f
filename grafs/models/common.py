"""Helpers shared by the model definitions: activation factories and site inspection.

Every model in :mod:`grafs.models` takes ``activation``: a zero-argument callable (a class
such as ``nn.ReLU`` or a ``lambda: MyAct()``) that is called once per activation site.
Each site is therefore its own ``nn.Module`` attribute, and a later
``replace_activations(model, factory, types=(nn.ReLU, nn.GELU))`` can swap them all;
no model calls a functional activation (``F.relu`` …) anywhere.
"""
from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

from grafs.errors import GrafsError

ActivationFactory = Callable[[], nn.Module]

__all__ = ["ActivationFactory", "make_activation", "check_activation_factory",
           "activation_sites", "count_parameters"]


def check_activation_factory(activation: object, default: ActivationFactory) -> ActivationFactory:
    """Return ``activation`` (or ``default`` when it is None) after checking it is a factory."""
    if activation is None:
        return default
    if isinstance(activation, nn.Module):
        raise GrafsError(
            f"activation must be a zero-argument factory that returns a new nn.Module "
            f"(e.g. nn.ReLU or `lambda: {type(activation).__name__}(...)`), not the module "
            f"instance {activation!r}; every activation site calls the factory once")
    if not callable(activation):
        raise GrafsError(
            f"activation must be a zero-argument callable returning an nn.Module "
            f"(e.g. nn.ReLU, nn.GELU), got {activation!r} of type {type(activation).__name__}")
    return activation


def make_activation(factory: ActivationFactory) -> nn.Module:
    """Call ``factory()`` for one activation site and check it returned an ``nn.Module``."""
    try:
        module = factory()
    except TypeError as exc:  # e.g. a class that needs arguments
        raise GrafsError(
            f"activation factory {factory!r} could not be called without arguments ({exc}); "
            f"wrap it, e.g. `lambda: nn.LeakyReLU(0.1)`") from exc
    if not isinstance(module, nn.Module):
        raise GrafsError(
            f"activation factory {factory!r} returned {type(module).__name__}, "
            f"expected an nn.Module")
    return module


def activation_sites(model: nn.Module,
                     types: type | Iterable[type] = (nn.ReLU, nn.GELU)) -> list[tuple[str, nn.Module]]:
    """``[(qualified_name, module), ...]`` of every submodule that is an instance of ``types``.

    The outermost match wins: modules nested inside a matched module are not listed.
    """
    if isinstance(types, type):
        types = (types,)
    types = tuple(types)
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, mod: nn.Module) -> None:
        for name, child in mod.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, types):
                out.append((full, child))
            else:
                walk(full, child)

    walk("", model)
    return out


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
