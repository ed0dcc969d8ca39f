"""The activations an evaluation trains besides the found ones: the paper's five baselines (as
native modules), their scaled forms, and the one factory that turns a formula or a baseline
name into fresh activation modules (used by evaluations, from-scratch checks and restarts)."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from grafs.errors import GrafsError

#: the baselines of the paper's tables, as native modules (fast) with their formula names
BASELINES: dict[str, Callable[[], nn.Module]] = {
    "ReLU": nn.ReLU, "GELU": nn.GELU, "SiLU": nn.SiLU, "ELU": nn.ELU, "LeakyReLU": nn.LeakyReLU,
}


#: the search op of each baseline (its op-normalisation constant, :func:`scaled_baselines`)
BASELINE_OPS = {"ReLU": "relu", "GELU": "gelu", "SiLU": "silu", "ELU": "elu",
                "LeakyReLU": "leaky_relu"}


def scaled_baselines(task=None) -> dict[str, str]:
    """The five baselines times their op-normalisation constant, 1/RMS on N(0, 1)
    (grafs.runtime.normalize.op_scale): ``{"1.412·ReLU": "1.41170...*relu(x)", ...}``.

    A normalised search's single-op formula carries that constant (1.412 is about the √2 of
    Kaiming's ReLU gain), and in networks without normalisation layers the gain alone can win:
    on mnist1d every scaled baseline beat its plain one (docs/results.md). Evaluating these
    beside a found formula separates what it gains by its shape from what it gains by its
    scale. ``task``: its search space's clipping bound, if any, is used as in the search."""
    from grafs.runtime.normalize import op_scale
    ell = None
    if task is not None:
        space = task.make_search_space()
        ell = space.ell if space.clip else None
    out = {}
    for name, op in BASELINE_OPS.items():
        c = op_scale(op, ell)
        out[f"{c:.3f}·{name}"] = f"{c!r}*{op}(x)"
    return out


def baseline_names(names: Sequence[str]) -> list[str]:
    """The :data:`BASELINES` keys for ``names`` spelled any way a formula may spell the
    function (case-insensitive, ``_`` ignored, aliases: ``gelu``, ``leaky_relu``, ``swish``),
    in order and without repeats."""
    from grafs.ops import lookup
    by_op = {lookup(k).name: k for k in BASELINES}
    if isinstance(names, str):
        names = [names]
    out, unknown = [], []
    for n in names:
        op = lookup(n) if isinstance(n, str) else None
        key = by_op.get(op.name) if op is not None else None
        if key is None:
            unknown.append(n)
        elif key not in out:
            out.append(key)
    if unknown:
        raise GrafsError(f"unknown baseline(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(BASELINES)} (any spelling a formula accepts: gelu, "
                         f"leaky_relu, LeakyReLU, swish, …)")
    return out


def activation_factory(formula: str, backend: str = "eager", *,
                       baseline: bool = False) -> Callable[[], nn.Module]:
    """A zero-argument callable making a fresh activation module for ``formula`` (compiled
    with ``backend``), or for the baseline named ``formula`` (a :data:`BASELINES` key) when
    ``baseline``. A formula is parsed here, so a bad one fails before any training."""
    if baseline:
        return BASELINES[formula]
    from grafs.compiler import compile as gcompile
    from grafs.grammar.parser import parse
    parse(formula)
    return lambda: gcompile(formula, backend=backend)
