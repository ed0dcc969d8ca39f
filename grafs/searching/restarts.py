"""Restarts: several independent searches, keep the one with the lowest validation loss.

A search's path is chaotic: which ops survive the first drops decides the formula, and on the
teacher task one seed of three typically ends in a basin no teacher has (``abs`` compositions
for a ``silu`` teacher). Those searches also end with a clearly higher validation loss, so
the search's own last validation loss (the discretized network, on the validation data its
weights never trained on) is a free criterion to pick among restarts: for each of the five
teachers, the search with the lowest one trained the best student from scratch or one within
its SEM (docs/results-teacher.md). DARTS kept the best of four runs too, but picked by a short
training from scratch; the validation loss costs nothing extra. A built-in task can pick the
DARTS way (``SearchConfig.restart_select="scratch"``: each restart's formula trained once from
scratch, :func:`grafs.protocol.task_search.scratch_val_loss`), passed here as ``score``.

Restart ``i`` of a search with seed ``s`` runs with seed ``s + 1000·i`` (restart 0 is the plain
search) on the same training/validation split, so the validation losses compare.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from grafs.errors import GrafsError
from grafs.searching.result import SearchResult

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


def pick_best(results: Sequence[SearchResult], seeds: Sequence[int],
              score: Callable[[SearchResult], float] | None = None) -> SearchResult:
    """The result with the lowest ``score`` (default: the final validation loss; the first on
    ties, one that failed or found no formula only when nothing else is left), with every
    restart recorded in ``history["restarts"]`` and ``search_seconds`` the sum of all of them
    (what the user waited for)."""
    if not results or len(results) != len(seeds):
        raise GrafsError(f"pick_best needs one seed per result, got {len(results)} results "
                         f"and {len(seeds)} seeds")
    t0 = time.perf_counter()
    scores = _scores(results, score)
    return _record(results, seeds, scores, _ranked(results, scores)[0],
                   scored=score is not None, select_seconds=time.perf_counter() - t0)


def _ranked(results: Sequence[SearchResult], scores: Sequence[float]) -> list[int]:
    """The restarts' indices, best first: the lowest score, then (on ties, e.g. every score
    inf) one that did not fail and has a formula before one that did, then the first: a failed
    restart comes first only when every restart failed."""
    return sorted(range(len(results)), key=lambda i: (scores[i], _unusable(results[i])))


def _unusable(r: SearchResult) -> bool:
    """A restart that failed or found no formula: never scored, kept only if all are."""
    return "error" in r.settings or not r.formula


def _scores(results: Sequence[SearchResult],
            score: Callable[[SearchResult], float] | None) -> list[float]:
    """``score`` of each result (inf for a failed restart or a non-finite score)."""
    if score is None:
        return [final_val_loss(r) for r in results]
    out = []
    for r in results:
        v = math.inf if _unusable(r) else float(score(r))
        out.append(v if math.isfinite(v) else math.inf)
    return out


def _failed(err: Exception) -> SearchResult:
    """A restart that stopped with a :class:`~grafs.errors.SearchError` (a non-finite loss):
    the others go on without it."""
    return SearchResult("", {"val_loss": []}, {"error": str(err)})


def _attempt(run: Callable[[], SearchResult]) -> SearchResult:
    from grafs.errors import SearchError
    try:
        return run()
    except SearchError as err:
        return _failed(err)


def _record(results, seeds, scores, best: int, raced: bool = False,
            scored: bool = False, select_seconds: float = 0.0) -> SearchResult:
    """``results[best]``, chosen on ``scores``, with every restart in its history; if every
    restart failed, the first one's error. ``scored``: the scores are not the validation
    losses (restart_select="scratch"), so both are recorded, and the ``select_seconds`` the
    scoring took count in ``search_seconds``."""
    from grafs.errors import SearchError
    chosen = results[best]
    if "error" in chosen.settings:
        raise SearchError(f"every one of the {len(results)} restarts failed; the first: "
                          f"{results[0].settings['error']}")

    def loss(r, v):
        v = final_val_loss(r) if scored else v
        return None if math.isinf(v) else v
    chosen.history["restarts"] = [
        {"seed": s, "formula": r.formula or None, "val_loss": loss(r, v),
         **({"score": None if math.isinf(v) else v} if scored else {}),
         "search_seconds": r.search_seconds, "chosen": i == best,
         **({"error": r.settings["error"]} if "error" in r.settings else {}),
         # a raced restart that lost stopped after the epoch its loss was taken at
         **({"stopped_at": len(r.history["val_loss"]) - 1}
            if raced and i != best and "error" not in r.settings else {})}
        for i, (s, r, v) in enumerate(zip(seeds, results, scores))]
    chosen.settings["restarts"] = len(results)
    chosen.search_seconds = sum(r.search_seconds for r in results)
    if scored:      # the free default's comparison is not timed; a training per restart is
        chosen.search_seconds += select_seconds
        chosen.settings["restart_select_seconds"] = select_seconds
    return chosen


def run_restarts(one: Callable[..., SearchResult], seed: int, restarts: int,
                 checkpoint_dir: str | os.PathLike | None = None,
                 resume: str | os.PathLike | None = None,
                 pick_epoch: int | None = None,
                 distributed: bool | None = None,
                 epochs: int | None = None,
                 score: Callable[[SearchResult], float] | None = None) -> SearchResult:
    """``one(seed_i, checkpoint_dir_i, resume_i, stop_after_epoch)`` for every restart, then
    :func:`pick_best`. Restart i checkpoints to (and resumes from) ``<dir>/restart-<i>``; with
    ``resume`` and no ``checkpoint_dir``, into ``resume`` (as :func:`grafs.search`). A run that
    does not resume first removes the ``restart-<i>/checkpoint.pt`` files an earlier run left in
    ``checkpoint_dir``, so that a later ``resume`` never mixes in another run's restarts.
    ``distributed``: as :func:`grafs.search`'s (a race then needs a shared ``checkpoint_dir``).

    ``score``: what the restarts are compared on, lower is better (default: the validation
    loss; e.g. the loss of the formula trained from scratch, ``restart_select="scratch"``).

    ``pick_epoch``: compare the restarts after this epoch (0-based) instead of at the end (a
    pick at or past the last of ``epochs``, when given, is the end):
    every restart runs to it, only the one with the lowest validation loss then runs on (a
    race; K restarts of E epochs cost K·(pick_epoch + 1) + E − pick_epoch − 1 epochs). The
    others are listed in ``history["restarts"]`` with their loss and leading formula at
    ``pick_epoch`` (``"stopped_at"``)."""
    seeds = restart_seeds(seed, restarts)
    if pick_epoch is not None and (not isinstance(pick_epoch, int) or isinstance(pick_epoch, bool)
                                   or pick_epoch < 0):
        raise GrafsError(f"pick_epoch must be None or an int >= 0, got {pick_epoch!r}")
    if pick_epoch is not None and epochs is not None and pick_epoch >= epochs - 1:
        pick_epoch = None       # at or past the last epoch: that is comparing at the end
    from grafs.searching import distributed as gdist
    if resume is not None:
        if not (Path(resume) / "restart-0" / "checkpoint.pt").exists():   # restart 0 runs first
            single = (Path(resume) / "checkpoint.pt").exists() or Path(resume).is_file()
            raise GrafsError(f"cannot resume restarts from {resume}: it has no "
                             f"restart-0/checkpoint.pt" + (" (it holds a single search's "
                             "checkpoint: resume that with restarts=1)" if single else ""))
        if checkpoint_dir is None:
            checkpoint_dir = resume     # as grafs.search: a resumed run checkpoints where it was
    if pick_epoch is not None and restarts > 1 and checkpoint_dir is None:
        # a race stops restarts and continues one: that goes through checkpoints, which every
        # process of a distributed search must read from one place
        if gdist.world_size(distributed) > 1:
            raise GrafsError("a race of restarts (pick_epoch) under torch.distributed needs a "
                             "checkpoint_dir that every process can read (a shared filesystem)")
        with tempfile.TemporaryDirectory(prefix="grafs-restarts-") as tmp:
            return run_restarts(one, seed, restarts, tmp, None, pick_epoch, distributed, epochs,
                                score)
    if checkpoint_dir is not None and resume is None and gdist.rank() == 0:
        # a fresh run: an earlier run's restart checkpoints (other settings, other restart
        # counts) must not be taken for this run's by a later resume
        for old in Path(checkpoint_dir).glob("restart-*/checkpoint.pt"):
            if old.parent.name[len("restart-"):].isdigit():
                old.unlink()
    dirs = [Path(checkpoint_dir) / f"restart-{i}" if checkpoint_dir is not None else None
            for i in range(restarts)]

    def resume_dir(i: int) -> Path | None:
        if resume is None:
            return None
        res = Path(resume) / f"restart-{i}"
        return res if (res / "checkpoint.pt").exists() else None  # not started when it stopped

    if pick_epoch is None or restarts == 1:
        return pick_best([_attempt(lambda: one(s, dirs[i], resume_dir(i), None))
                          for i, s in enumerate(seeds)], seeds, score)
    from grafs.searching.checkpoint import Interrupted
    heads = []        # each restart up to pick_epoch: a result whose history ends there
    latest = []       # where each restart's latest checkpoint is (the winner runs on from it)
    for i, s in enumerate(seeds):
        res = resume_dir(i)
        done = _checkpoint(res)
        latest.append(res)
        if done is None or done[0]["epochs"][-1] < pick_epoch:
            latest[i] = dirs[i]
            try:
                r = _attempt(lambda: one(s, dirs[i], res, pick_epoch))
            except Interrupted:
                pass
            else:       # failed, or a search with no more than pick_epoch + 1 epochs
                heads.append(r)
                continue
            done = _checkpoint(dirs[i])
            if done is None:    # rank 0 wrote it (after every epoch) where this rank cannot see
                raise GrafsError(f"restart {i} stopped after epoch {pick_epoch + 1}, but this "
                                 f"process (rank {gdist.rank()}) cannot read its checkpoint "
                                 f"{dirs[i] / 'checkpoint.pt'}: a race of restarts under "
                                 f"torch.distributed needs a checkpoint_dir on a filesystem "
                                 f"every process shares")
        hist, seconds = done
        # a winner of an earlier, stopped run may be past pick_epoch: compare it where it was
        # (and count its time up to there)
        cut = hist["epochs"].index(pick_epoch) + 1 if pick_epoch in hist["epochs"] else len(hist["epochs"])
        seconds -= sum(hist.get("seconds", [])[cut:])
        heads.append(SearchResult(hist["formula"][cut - 1],
                                  {k: hist[k][:cut] for k in ("val_loss", "formula")},
                                  search_seconds=seconds))
    t0 = time.perf_counter()
    losses = _scores(heads, score)
    select_seconds = time.perf_counter() - t0
    # the winner runs on from its checkpoint at pick_epoch (or from where a stopped run left
    # it); if it fails on the way, the next best does
    for best in _ranked(heads, losses):
        if "error" in heads[best].settings:
            break
        final = _attempt(lambda: one(seeds[best], dirs[best], latest[best], None))
        heads[best] = final
        if "error" not in final.settings:
            break
    picked = _record(heads, seeds, losses, best, raced=True, scored=score is not None,
                     select_seconds=select_seconds)
    picked.settings["restart_pick_epoch"] = pick_epoch
    return picked


def _checkpoint(folder: Path | None) -> tuple[dict, float] | None:
    """The history and elapsed seconds in ``folder/checkpoint.pt`` (None when there is none)."""
    if folder is None or not (Path(folder) / "checkpoint.pt").exists():
        return None
    from grafs.searching.checkpoint import read_checkpoint
    ck = read_checkpoint(Path(folder) / "checkpoint.pt", "cpu")   # unusable: a GrafsError
    return json.loads(ck["history"]), float(ck["elapsed"])


def search_restarts(model, train_data, val_data=None, *, restarts: int = 3, seed: int = 0,
                    pick_epoch: int | None = None, own_splits: bool = False,
                    train_fraction: float = 0.75, checkpoint_dir=None, resume=None,
                    score: Callable[[SearchResult], float] | None = None,
                    **kwargs) -> SearchResult:
    """:func:`grafs.search` ``restarts`` times (seeds ``seed``, ``seed + 1000``, …) from copies
    of ``model`` in its current state (or from ``model(seed)`` when it is a factory), on one training/validation split (with no
    ``val_data``, the training data split with ``seed``); returns the search with the lowest
    final validation loss, every restart listed in ``history["restarts"]``. Costs ``restarts``
    searches, or less with ``pick_epoch`` (a race, see :func:`run_restarts`). ``own_splits``
    (with no ``val_data``): each restart splits the training data with its own seed, so a
    bad split cannot trap every restart (on the teacher task this reached a teacher that every
    one-split study missed). ``score``: compare the restarts on it instead, lower is better
(:func:`run_restarts`; grafs.search passes the loss of each formula trained from scratch).
``kwargs`` go to :func:`grafs.searching.loop.search`."""
    from grafs.searching.loop import search
    from grafs.searching.data import split_dataset
    restart_seeds(seed, restarts)      # a bad count is an error before any data is touched
    if own_splits and val_data is not None:
        raise GrafsError("own_splits splits the training data per restart; it cannot be used "
                         "with val_data (leave val_data out, or own_splits=False)")
    data = train_data
    if val_data is None:
        train_data, val_data = split_dataset(train_data, train_fraction, seed)
    defaults = inspect.signature(search).parameters
    epochs = kwargs.get("epochs", defaults["epochs"].default)
    warm = kwargs.get("warmstart_epochs", defaults["warmstart_epochs"].default)
    if pick_epoch is not None and isinstance(pick_epoch, int) and pick_epoch < warm:
        raise GrafsError(f"pick_epoch ({pick_epoch}) falls in the warm start (warmstart_epochs="
                         f"{warm}), where every restart still trains the original activation; "
                         f"give a later epoch or None")

    def one(s, ck, res, stop):     # ``model`` itself stays as it is: each restart gets a copy
        tr, va = split_dataset(data, train_fraction, s) if own_splits else (train_data, val_data)
        net = copy.deepcopy(model) if isinstance(model, nn.Module) else model(s)
        i = (s - seed) // RESTART_SEED_STRIDE
        return search(net, tr, va, seed=s, checkpoint_dir=ck, resume=res, _stop_after_epoch=stop,
                      _progress_desc=f"restart {i + 1}/{restarts} (seed {s})", **kwargs)
    return run_restarts(one, seed, restarts, checkpoint_dir, resume, pick_epoch,
                        kwargs.get("distributed"), epochs, score=score)


__all__ = ["RESTART_SEED_STRIDE", "final_val_loss", "pick_best", "restart_seeds",
           "run_restarts", "search_restarts"]
