"""The check after a search: the returned formula trains from scratch and is not affine, else
its clipped form or the model's original activation is returned, with a warning."""
from __future__ import annotations

import torch

from grafs.errors import warn
from grafs.searching.result import SearchResult

# initialisations the check trains with (the search's seed and the next ones): one let through
# `abs(max(x, 0.58*sinh(x)))` on mnist1d, which fails at step 2 in half of the evaluation's seeds
# (docs/search-cost.md); each costs a few steps (0.03-0.08 s there)
CHECK_SEEDS = 3


def check_trains(result: SearchResult, scratch, space, original: str, seed: int) -> None:
    """The returned formula trains from scratch (``scratch.problem``: a few steps with the
    search's recipe, or a task's evaluation protocol, from :data:`CHECK_SEEDS` initialisations)
    and is not affine; if it does not train,
    its clipped form (the function the search evaluated, ``history["unclipped_formula"]``
    keeps the found one); else, or when it is affine, the original activation; with a
    warning, the replaced formula in ``history["unusable_formula"]``. The original activation
    itself is returned as it is."""
    from grafs.compiler.lower import clip_expr
    from grafs.grammar.parser import parse
    bad = result.formula
    if bad == original:
        return      # nothing to fall back to: the model's own activation stays
    if nearly_affine(parse(bad)):
        # a·x + b makes the layers around it one linear map: never what a user wants (on the
        # own-model study such a formula lost to ReLU every time, docs/results-own-models.md)
        why = ("is affine in x on [-3, 3], where most pre-activations lie (the layers around it "
               "would be one linear map)")
        result.formula, what = original, f"your original activation {original}"
    else:
        why = _problem(scratch, bad, seed)
        if why is None:
            return
        clipped = str(clip_expr(parse(bad), space.ell)) if space.clip else None
        if clipped is not None and clipped != bad and _problem(scratch, clipped, seed) is None:
            # the function the search trained, bounded-op clipping included, does train
            result.formula = clipped
            result.history["unclipped_formula"] = bad
            unscaled = result.history.get("unscaled_formula")
            if unscaled:        # the same ops without their constants: clipped alike
                result.history["unscaled_formula"] = str(clip_expr(parse(unscaled), space.ell))
            what = f"its clipped form (the function the search evaluated), which trains: {clipped}"
        else:
            result.formula, what = original, f"your original activation {original}"
    msg = f"the found formula {bad} {why}; returning {what}"
    result.history["unusable_formula"] = bad
    result.history.setdefault("warnings", []).append(msg)
    warn(msg)


def _problem(scratch, formula: str, seed: int) -> str | None:
    """The first problem ``formula`` has from scratch over seeds ``seed``, ``seed + 1``, ...
    (:data:`CHECK_SEEDS` of them), or None."""
    for s in range(seed, seed + CHECK_SEEDS):
        why = scratch.problem(formula, s)
        if why is not None:
            return why if s == seed else f"{why} (from initialisation seed {s})"
    return None


def nearly_affine(expr, lo: float = -3.0, hi: float = 3.0, tol: float = 0.02) -> bool:
    """Whether ``expr`` is a·x + b on [lo, hi] up to ``tol`` (the RMS residual of its best
    straight line over the RMS of its variation): exactly affine formulas, and piecewise ones
    such as ``min(0.4985*x - 0.13, 0.7062*x - 0.83)`` whose kink lies outside the range
    (that one lost to ReLU on the own-model study as the affine ones did)."""
    from grafs.compiler.eager import run_expr
    from grafs.errors import GrafsError
    from grafs.runtime.discretize import is_affine
    if is_affine(expr):
        return True
    xs = torch.linspace(lo, hi, 601, dtype=torch.float64)
    try:
        with torch.no_grad():
            ys = run_expr(expr, xs, {}).double().expand_as(xs)
    except (GrafsError, RuntimeError, KeyError, TypeError):
        return False        # (a trainable family: not judged here)
    if not torch.isfinite(ys).all():
        return False
    a = torch.stack([xs, torch.ones_like(xs)], 1)
    coef = torch.linalg.lstsq(a, ys.unsqueeze(1)).solution
    resid = (a @ coef).squeeze(1) - ys
    spread = (ys - ys.mean()).pow(2).mean().sqrt()
    return bool(spread == 0 or resid.pow(2).mean().sqrt() <= tol * spread)
