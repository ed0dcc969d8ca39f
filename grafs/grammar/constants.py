"""The float64 value of a registry op applied to constants: the one constant evaluator.

Constant folding (:func:`grafs.grammar.derivative.fold`, the compiler's
:func:`grafs.compiler.lower.fold_constants` and reverse mode's builder) and the sympy bridge
(numeric values of constant sub-expressions, sympy's ``evalf`` of a grafs function) all evaluate
a constant op application here, so they agree to the bit with each other and with the torch
function a compiled formula runs.
"""
from __future__ import annotations

import math
from typing import Sequence

from grafs.ops import OPS


def const_value(op: str, values: Sequence[float], finite: bool = False) -> float | None:
    """Registry op ``op`` on the numbers ``values`` (its tensor arguments, then its trailing
    scalars), computed by its torch function on 0-d float64 tensors.

    None when the op has no such function (not a registry op, or a trainable family with
    learnable state); inf and nan are returned as they are, unless ``finite``: then None too."""
    spec = OPS.get(op)
    if spec is None or spec.module is not None:
        return None
    import torch
    t = [torch.tensor(v, dtype=torch.float64) for v in values[: spec.arity]]
    with torch.no_grad():
        v = float(spec.torch(*t, *values[spec.arity:]))
    return None if finite and not math.isfinite(v) else v


__all__ = ["const_value"]
