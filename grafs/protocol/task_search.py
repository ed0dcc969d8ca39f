"""Search on a built-in task: ``grafs.search`` with the task's model, data and
``SearchConfig`` — a task is those three, nothing more — and the task's evaluation protocol as
what measures formulas from scratch (:class:`TaskScratch`: the restart pick, the check)."""
from __future__ import annotations

import math

import torch

from grafs.searching.data import resolve_device
from grafs.searching.result import SearchResult

__all__ = ["search_task", "scratch_val_loss", "TaskScratch"]


def search_task(task, *, seed: int = 0, epochs: int | None = None, space=None, progress: bool = True,
                checkpoint_dir=None, resume=None, cell_mode: str = "auto",
                max_steps_per_epoch: int | None = None, device=None,
                amp: str | None = None, callbacks=None,
                distributed: bool | None = None) -> SearchResult:
    """:func:`grafs.search` on a built-in task (grafs.tasks) with its ``search_config``
    (distributed: the task's batch size per process). ``epochs``: a shorter (or longer) run,
    the warm start and first drop moved inside it; ``max_steps_per_epoch`` caps the config's.
    With ``search_config.restarts`` > 1, that many searches (grafs.searching.restarts), each
    checkpointed under ``checkpoint_dir/restart-<i>``, picked by their final validation loss
    (``restart_select="val_loss"``, or at ``restart_pick_epoch``: a race) or by their formula
    trained from scratch with the task's evaluation configuration on the search split
    (``"scratch"``)."""
    from grafs.searching.entry import search
    cfg = task.search_config
    if max_steps_per_epoch is not None:
        cap = cfg.max_steps_per_epoch
        cfg = cfg.replace(max_steps_per_epoch=max_steps_per_epoch if cap is None else min(cap, max_steps_per_epoch))
    if epochs is not None:
        cfg = cfg.for_epochs(epochs)
    if space is None:
        space = task.make_search_space()     # e.g. inr adds sin/cos
        space.normalize = cfg.normalize
    split = task.search_split(seed=seed)
    # restarts on their own splits split the training data with their seeds (the same rule)
    data = (task.train_data, None) if cfg.restarts > 1 and cfg.restart_splits else split
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    result = search(lambda s: task.make_model(seed=s), *data, config=cfg, seed=seed, space=space,
                    loss_fn=task.loss_fn, activation_types=task.activation_types,
                    scratch=TaskScratch(task, split, dev), cell_mode=cell_mode,
                    checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
                    device=device, amp=amp, callbacks=callbacks, distributed=distributed)
    result.settings["task"] = task.name
    return result


class TaskScratch:
    """A built-in task's evaluation protocol as what ``grafs.search`` measures formulas with:
    the restart pick trains a formula with the task's evaluation configuration on the search
    split (:func:`scratch_val_loss`), the check runs
    :func:`grafs.protocol.evaluate.from_scratch_problem`."""

    def __init__(self, task, split, device: torch.device):
        self.task, self.split, self.device = task, split, device
        self.runs = 0

    def val_loss(self, formula: str, seed: int = 0) -> float:
        self.runs += 1
        return scratch_val_loss(self.task, formula, self.split, seed=seed, device=self.device)

    def problem(self, formula: str, seed: int = 0) -> str | None:
        from grafs.protocol.evaluate import from_scratch_problem
        self.runs += 1
        problem = from_scratch_problem(self.task, formula, seed=seed)
        if problem is None or repr(self.task.name) in problem:
            return problem
        return f"{problem} on task {self.task.name!r}"


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
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    try:        # seeded as an evaluation run: a resumed search scores as the uninterrupted one
        metrics, _, _ = train_and_evaluate(task, activation_factory(formula), seed, dev,
                                           data=train, split=val)
    except GrafsError:        # Task.fit raises on a non-finite training loss
        return math.inf
    loss = metrics["loss"]
    return float(loss) if math.isfinite(loss) else math.inf
