"""Search on a built-in task (grafs.tasks): :func:`search` with the task's search
configuration, its restarts (grafs.searching.restarts) and their pick, and the checks after a search
(does the found formula train from scratch; if only with the search's clipping, return that).
The built-in tasks above the search: a task is a model, data and one SearchConfig."""
from __future__ import annotations

import math

import torch

from grafs.searching.data import resolve_device
from grafs.searching.result import SearchResult

__all__ = ["search_task", "scratch_val_loss"]


def search_task(task, *, seed: int = 0, epochs: int | None = None, space=None, progress: bool = True,
                checkpoint_dir=None, resume=None, cell_mode: str = "auto",
                max_steps_per_epoch: int | None = None, device=None,
                amp: str | None = None, callbacks=None,
                distributed: bool | None = None) -> SearchResult:
    """Run :func:`search` on a built-in task (grafs.tasks) with its search configuration
    (distributed: the task's batch size per process, see :func:`search`). With
    ``search_config.restarts`` > 1, that many searches on one split (grafs.searching.restarts), each
    checkpointed under ``checkpoint_dir/restart-<i>``; the one with the lowest final
    validation loss is returned (with ``restart_pick_epoch``, compared at that epoch and only
    the best one run on; with ``restart_select="scratch"``, the one whose formula trained
    from scratch on the search split reaches the lowest validation loss)."""
    from grafs.searching.distributed import world_size
    from grafs.searching.loop import search
    cfg = task.search_config
    epochs = cfg.epochs if epochs is None else epochs
    (xt, yt), (xv, yv) = task.search_split(seed=seed)    # one split for every restart
    spe = cfg.steps_per_epoch(math.ceil(len(xt) / world_size(distributed)))  # a rank's shard
    if max_steps_per_epoch is not None:
        spe = min(spe, max_steps_per_epoch)
    warm = min(cfg.warmstart_epochs, epochs - 1)
    if space is None:
        space = task.make_search_space()     # e.g. inr adds sin/cos
        space.normalize = cfg.normalize

    def one(s: int, ck, res, stop=None) -> SearchResult:
        from grafs.searching.restarts import RESTART_SEED_STRIDE
        i = (s - seed) // RESTART_SEED_STRIDE
        desc = "GRAFS search" if cfg.restarts == 1 else f"restart {i + 1}/{cfg.restarts} (seed {s})"
        data = task.search_split(seed=s) if cfg.restart_splits and s != seed else ((xt, yt), (xv, yv))
        return search(task.make_model(seed=s), *data, space=space, epochs=epochs,
                      warmstart_epochs=warm,
                      shrink_start=max(1, min(cfg.shrink_start_epoch, epochs - 1)) if epochs > 1 else None,
                      seed=s, batch_size=cfg.batch_size, loss_fn=task.loss_fn,
                      optimizer=cfg.make_optimizer,
                      scheduler=lambda opt: cfg.make_scheduler(opt, epochs * spe),
                      arch_lr=cfg.arch_lr, arch_weight_decay=cfg.arch_weight_decay,
                      arch_betas=tuple(cfg.arch_betas), arch_steps=cfg.arch_steps,
                      arch_batch_size=cfg.arch_batch_size, single_level=cfg.single_level,
                      grad_accumulation=cfg.grad_accum_steps,
                      activation_types=task.activation_types, cell_mode=cell_mode,
                      checkpoint_dir=ck, resume=res, progress=progress,
                      max_steps_per_epoch=spe, device=device, amp=amp, callbacks=callbacks,
                      distributed=distributed, _stop_after_epoch=stop, _progress_desc=desc)
    if cfg.restarts == 1:
        result = one(seed, checkpoint_dir, resume)
    else:   # grafs.searching.restarts: the restart with the lowest validation loss (at the end, or a race)
        from grafs.searching.restarts import run_restarts
        score = None
        if cfg.restart_select == "scratch":
            from grafs.searching import distributed as gdist
            dev = resolve_device(device) if device is not None else torch.device("cpu")
            ctx = gdist.context(distributed, dev, device is not None)

            def score(r: SearchResult) -> float:
                def run() -> float:
                    return scratch_val_loss(task, r.formula, ((xt, yt), (xv, yv)), seed=seed,
                                            device=ctx.device if ctx is not None else dev)
                # every process must pick the same restart: rank 0 trains, the others hear it
                return run() if ctx is None else ctx.from_rank0(run)
        result = run_restarts(one, seed, cfg.restarts, checkpoint_dir, resume,
                              cfg.restart_pick_epoch, distributed, epochs, score)
        result.settings["restart_select"] = cfg.restart_select
    result.settings["task"] = task.name
    _warn_if_untrainable(task, result, seed)
    return result


def scratch_val_loss(task, formula: str, split, *, seed: int = 0,
                     device: torch.device | str | None = None) -> float:
    """The validation loss of ``task``'s model with ``formula`` trained from scratch (the
    evaluation's configuration and seed ``seed``) on ``split = ((x_train, y_train), (x_val,
    y_val))``; inf when it does not train (a non-finite loss). What ``restart_select="scratch"``
    compares restarts on: the quantity a user cares about, which the search's own validation
    loss (a relaxed or freshly discretized network on warm-started weights) only estimates."""
    from grafs.errors import GrafsError
    from grafs.protocol.runs import train_and_evaluate
    from grafs.protocol.baselines import activation_factory
    train, val = split
    dev = torch.device(device) if device is not None else torch.device("cpu")
    try:        # seeded as an evaluation run: a resumed search scores as the uninterrupted one
        metrics, _, _ = train_and_evaluate(task, activation_factory(formula), seed, dev,
                                           data=train, split=val)
    except GrafsError:        # Task.fit raises on a non-finite training loss
        return math.inf
    loss = metrics["loss"]
    return float(loss) if math.isfinite(loss) else math.inf


def clipped_formula(task, formula: str) -> str | None:
    """``formula`` with the bounded-op clipping of the task's search space written out
    (``sinh(clamp(x, -2.998, 2.998))``, grafs.compiler.lower.clip_expr): the function the search
    evaluated. None when the space does not clip or nothing in the formula is clipped."""
    from grafs.compiler import compile as gcompile
    from grafs.grammar.parser import parse
    from grafs.compiler.lower import clip_expr
    space = task.make_search_space()
    if not space.clip:
        return None
    expr = parse(formula)
    clipped = clip_expr(expr, space.ell)
    return None if clipped is expr else str(clipped)


def _warn_if_untrainable(task, result: SearchResult, seed: int) -> None:
    """Warn when the found formula cannot be trained from scratch on the task (one pass and
    five training steps of a fresh model; grafs.protocol.evaluate.from_scratch_problem); when the
    formula with the search's clipping written out trains, it replaces the found one."""
    import warnings

    from grafs.errors import GrafsWarning
    from grafs.protocol.evaluate import from_scratch_problem
    problem = from_scratch_problem(task, result.formula, seed=seed)
    if problem:
        clipped = clipped_formula(task, result.formula)
        if clipped is not None and not from_scratch_problem(task, clipped, seed=seed):
            # the function the search trained, bounded-op clipping included, does train: return
            # that one (a user's first `grafs search` otherwise hands them a NaN)
            result.history["unclipped_formula"] = result.formula
            result.formula = clipped
            unscaled = result.history.get("unscaled_formula")
            if unscaled:        # the same ops without their constants: clipped alike
                result.history["unscaled_formula"] = clipped_formula(task, unscaled) or unscaled
            msg = (f"the found formula {problem} on task {task.name!r} (the search trained "
                   f"through clipped ops); returning it with the search's clipping written "
                   f"out, which trains: {clipped} (the unclipped one is in "
                   f"SearchResult.history['unclipped_formula'])")
        else:
            msg = (f"the found formula {problem} on task {task.name!r}: a model trained from "
                   f"scratch with it (grafs evaluate) will fail. The search trained through "
                   f"clipped ops on warm-started weights; try another seed or a longer search")
        result.history.setdefault("warnings", []).append(msg)
        warnings.warn(msg, GrafsWarning, stacklevel=3)
