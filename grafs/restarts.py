"""Restarts: several independent searches, keep the one with the lowest validation loss.

A search's path is chaotic: which ops survive the first drops decides the formula, and on the
teacher task one seed of three typically ends in a basin no teacher has (``abs`` compositions
for a ``silu`` teacher). Those searches also end with a clearly higher validation loss, so
the search's own last validation loss (the discretized network, on data α never trained on
in its weight steps) is a free criterion to pick among restarts: on the five teachers it
ranked the students trained from scratch the same way (docs/results-teacher.md). DARTS picked
the best of four runs too, but by a short training from scratch; this costs nothing extra.

Restart ``i`` of a search with seed ``s`` runs with seed ``s + 1000·i`` (restart 0 is the plain
search) on the same training/validation split, so the validation losses compare.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Callable, Sequence

from grafs.errors import GrafsError
from grafs.search_result import SearchResult

#: restart i of a search with seed s uses seed s + RESTART_SEED_STRIDE·i
RESTART_SEED_STRIDE = 1000


def restart_seeds(seed: int, restarts: int) -> list[int]:
    """The seeds of ``restarts`` restarts of a search with ``seed`` (the first is ``seed``)."""
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
        raise GrafsError(f"restarts must be an int >= 1 (1: a single search), got {restarts!r}")
    return [seed + RESTART_SEED_STRIDE * i for i in range(restarts)]


def final_val_loss(result: SearchResult) -> float:
    """The last epoch's validation loss of a search (the discretized network); inf if none."""
    losses = result.history.get("val_loss") or []
    v = losses[-1] if losses else None
    return float(v) if v is not None and math.isfinite(float(v)) else math.inf


def pick_best(results: Sequence[SearchResult], seeds: Sequence[int]) -> SearchResult:
    """The result with the lowest final validation loss (the first on ties), with every
    restart recorded in ``history["restarts"]`` and ``search_seconds`` the sum of all of
    them (what the user waited for)."""
    if not results or len(results) != len(seeds):
        raise GrafsError(f"pick_best needs one seed per result, got {len(results)} results "
                         f"and {len(seeds)} seeds")
    losses = [final_val_loss(r) for r in results]
    best = min(range(len(results)), key=lambda i: losses[i])
    chosen = results[best]
    chosen.history["restarts"] = [
        {"seed": s, "formula": r.formula, "val_loss": None if math.isinf(v) else v,
         "search_seconds": r.search_seconds, "chosen": i == best}
        for i, (s, r, v) in enumerate(zip(seeds, results, losses))]
    chosen.settings["restarts"] = len(results)
    chosen.search_seconds = sum(r.search_seconds for r in results)
    return chosen


def run_restarts(one: Callable[[int, Path | None, Path | None], SearchResult], seed: int,
                 restarts: int, checkpoint_dir: str | os.PathLike | None = None,
                 resume: str | os.PathLike | None = None) -> SearchResult:
    """``one(seed_i, checkpoint_dir_i, resume_i)`` for every restart, then :func:`pick_best`.
    Restart i checkpoints to (and resumes from) ``<dir>/restart-<i>``."""
    seeds = restart_seeds(seed, restarts)
    results = []
    for i, s in enumerate(seeds):
        sub = f"restart-{i}"
        ck = Path(checkpoint_dir) / sub if checkpoint_dir is not None else None
        res = Path(resume) / sub if resume is not None else None
        if res is not None and not (res / "checkpoint.pt").exists():
            res = None     # this restart had not started when the run stopped
        results.append(one(s, ck, res))
    return pick_best(results, seeds)


def search_restarts(model, train_data, val_data=None, *, restarts: int = 3, seed: int = 0,
                    train_fraction: float = 0.75, checkpoint_dir=None, resume=None,
                    **kwargs) -> SearchResult:
    """:func:`grafs.search` ``restarts`` times (seeds ``seed``, ``seed + 1000``, …) from copies
    of ``model`` in its current state, on one training/validation split (with no
    ``val_data``, the training data split with ``seed``); returns the search with the lowest
    final validation loss, every restart listed in ``history["restarts"]``. Costs ``restarts``
    searches; ``kwargs`` go to :func:`grafs.search`."""
    from grafs.search import search
    from grafs.search_data import split_dataset
    restart_seeds(seed, restarts)      # a bad count is an error before any data is touched
    if val_data is None:
        train_data, val_data = split_dataset(train_data, train_fraction, seed)

    def one(s, ck, res):     # ``model`` itself stays as it is: each restart gets a copy
        return search(copy.deepcopy(model), train_data, val_data, seed=s, checkpoint_dir=ck,
                      resume=res, **kwargs)
    return run_restarts(one, seed, restarts, checkpoint_dir, resume)


__all__ = ["RESTART_SEED_STRIDE", "final_val_loss", "pick_best", "restart_seeds",
           "run_restarts", "search_restarts"]
