"""The model's own activation as a formula (``relu(x)``, ``leaky_relu(x, 0.2)``, ...): what
grafs.search's check falls back to and its verdict compares with."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.searching.sites import Act


#: nn.GELU(approximate="tanh") as a formula
_GELU_TANH = "0.5*x*(1 + tanh(0.7978845608028654*(x + 0.044715*x^3)))"


def module_formula(m: nn.Module) -> str | None:
    """The formula of activation module ``m`` with its own settings (a LeakyReLU's slope, an
    ELU's alpha, GELU's tanh form, ...), or None when there is none."""
    from grafs.ops import lookup
    if isinstance(m, Act):
        return m.formula
    if isinstance(m, nn.LeakyReLU):
        return f"leaky_relu(x, {float(m.negative_slope)!r})"
    if isinstance(m, nn.ELU):
        return f"elu(x, {float(m.alpha)!r})"
    if isinstance(m, nn.CELU):            # celu(x, a) = a·elu(x/a)
        a = float(m.alpha)
        return "elu(x)" if a == 1.0 else f"{a!r}*elu(x/{a!r})"
    if isinstance(m, nn.GELU) and m.approximate == "tanh":
        return _GELU_TANH
    if isinstance(m, nn.Softplus) and float(m.beta) != 1.0:
        return f"softplus({float(m.beta)!r}*x)/{float(m.beta)!r}"
    op = lookup(type(m).__name__)
    return None if op is None else f"{op.name}(x)"


def same_function(formula: str, m: nn.Module) -> bool:
    """Whether ``formula`` computes what module ``m`` does (on a grid over [-8, 8])."""
    from grafs.compiler import compile as gcompile
    xs = torch.linspace(-8, 8, 1601)
    try:
        with torch.no_grad():
            want = gcompile(formula, backend="eager")(xs)
            got = m.cpu()(xs.clone()).reshape(-1)        # (an inplace=True module)
    except (GrafsError, RuntimeError, TypeError, ValueError):
        return False
    return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def original_activation(model: nn.Module, types: Sequence[type]) -> str:
    """The formula of the model's first searched activation, with its settings (e.g.
    'relu(x)', 'leaky_relu(x, 0.2)'): what the check falls back to and the verdict compares
    with. A GrafsError when the module computes no formula grafs can write (e.g. a PReLU,
    whose slope is learned)."""
    for m in model.modules():
        if isinstance(m, tuple(types) + (Act,)):
            formula = module_formula(m)
            if formula is not None and (isinstance(m, Act) or same_function(formula, copy.deepcopy(m))):
                return formula
            raise GrafsError(f"cannot write {m!r} as a formula for the check and the verdict; "
                             f"use grafs.Act('<formula>') in the model, or pass check=False and "
                             f"verdict_seeds=0")
    raise GrafsError(f"no activation modules of types {[t.__name__ for t in types]} found in "
                     f"{type(model).__name__}; use grafs.Act in place of functional calls")
