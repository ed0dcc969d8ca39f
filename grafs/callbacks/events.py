"""Callbacks: follow a search or an evaluation while it runs (experiment tracking).

Subclass :class:`Callback`, override the methods you need and pass instances to
``grafs.search(..., callbacks=[...])`` or ``grafs.protocol.evaluate.evaluate(..., callbacks=[...])``.
Every method is a no-op by default. :class:`grafs.callbacks.tensorboard.TensorBoardLogger` is the
built-in one; MLflow, Weights & Biases and others plug in the same way (see docs/guide/tracking.md),
without grafs depending on them.

The info objects hold plain Python values (floats, lists, strings) except
:attr:`StepInfo.loss` and :attr:`StepInfo.val_loss`, which stay on the device so that a callback
that ignores them costs no host synchronisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import torch

from grafs.errors import GrafsError
from grafs.runtime.entropy import active_alpha, hole_entropies

if TYPE_CHECKING:  # pragma: no cover
    from grafs.protocol.evaluate import EvalTable
    from grafs.runtime.cell import RelaxedCell
    from grafs.searching import SearchResult


@dataclass
class SearchStart:
    """Sent once before the first epoch of a search (also when it resumes).

    Attributes:
        settings: The search's arguments, as stored in ``SearchResult.settings``.
        holes: The hole names of the search space, e.g. ``["U0", "U1", "B0", …]``.
        epochs: Total epochs of the search.
        first_epoch: 0, or the epoch a resumed search continues from.
        steps_per_epoch: Training steps per epoch.
        activation_sites: How many activation modules the cell replaced.
    """
    settings: dict
    holes: list[str]
    epochs: int
    first_epoch: int
    steps_per_epoch: int
    activation_sites: int


@dataclass
class StepInfo:
    """Sent after every training step (arch step + weight step).

    Attributes:
        epoch: The epoch, 0-based.
        step: The step within the epoch.
        global_step: Steps since the start of the search (epoch·steps_per_epoch + step).
        loss: The weight step's training loss, still on the device.
        val_loss: The arch step's validation-batch loss, still on the device (with
            ``single_level``, the joint step's training-batch loss: the one α trained on).
        warm: A warm-start step (its weight step used the original activation).
    """
    epoch: int
    step: int
    global_step: int
    loss: torch.Tensor
    val_loss: torch.Tensor
    warm: bool


@dataclass
class EpochInfo:
    """Sent after every epoch (after the checkpoint is written).

    Attributes:
        epoch: The epoch, 0-based, as in ``SearchResult.history["epochs"]``.
        epochs: Total epochs of the search.
        train_loss: Mean training loss of the epoch's weight steps.
        val_loss: Validation loss after the epoch.
        train_acc: Training accuracy, or None when the targets are not class labels.
        val_acc: Validation accuracy, or None.
        num_active: Ops still active over all holes.
        holes: The hole names.
        active_ops: Per hole, the ops still active.
        alpha: Per hole, the α of its active ops (same order).
        entropy: Per hole, the normalised entropy of the Dirichlet mean (`normalized_entropy`).
        formula: The leading (discretized) formula.
        dropped: The (hole, op) pairs dropped at the start of this epoch.
        seconds: Wall time of the epoch.
        warm: A warm-start epoch.
        gamma: All γ values of the cell.
    """
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    train_acc: float | None
    val_acc: float | None
    num_active: int
    holes: list[str]
    active_ops: list[list[str]]
    alpha: list[list[float]]
    entropy: list[float]
    formula: str
    dropped: list[tuple[str, str]]
    seconds: float
    warm: bool
    gamma: list[float] = field(default_factory=list)


@dataclass
class EvalStart:
    """Sent once before the first training run of an evaluation.

    Attributes:
        task: The task's name.
        metric: The name of the test metric.
        activations: Name -> formula of every activation, baselines included.
        seeds: The seeds each activation is trained with.
        epochs: Training epochs per run.
    """
    task: str
    metric: str
    activations: dict[str, str]
    seeds: list[int]
    epochs: int


@dataclass
class EvalRunInfo:
    """Sent after each evaluation run (one activation, one seed).

    Attributes:
        name: The activation's name in the table.
        formula: Its formula (a baseline's name for the baselines).
        seed: The run's seed.
        metric: The name of the test metric.
        score: The test metric of this run.
        seconds: Training wall time.
        train_loss: Mean training loss per epoch.
        run: 0-based index of this run.
        runs: Total runs of the evaluation.
    """
    name: str
    formula: str
    seed: int
    metric: str
    score: float
    seconds: float
    train_loss: list[float]
    run: int
    runs: int


class Callback:
    """Base class of search and evaluation callbacks: every method does nothing."""

    def on_search_start(self, info: SearchStart) -> None:
        """Before the first epoch of a search."""

    def on_step_end(self, info: StepInfo) -> None:
        """After every training step. Reading ``info.loss`` (``float(...)``) syncs the device."""

    def on_epoch_end(self, info: EpochInfo) -> None:
        """After every search epoch."""

    def on_search_end(self, result: SearchResult) -> None:
        """When the search returns its result (not when it raises)."""

    def on_eval_start(self, info: EvalStart) -> None:
        """Before the first training run of an evaluation."""

    def on_eval_run_end(self, info: EvalRunInfo) -> None:
        """After each training run of an evaluation."""

    def on_eval_end(self, table: EvalTable) -> None:
        """When the evaluation returns its table."""


class CallbackList(Callback):
    """Calls each callback in turn; what search() and evaluate() hold. False when empty."""

    def __init__(self, callbacks: Callback | Iterable[Callback] | None = None):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback):
            callbacks = [callbacks]
        try:
            self.callbacks = list(callbacks)
        except TypeError:
            raise GrafsError(f"callbacks must be a list of grafs.Callback instances, got "
                             f"{type(callbacks).__name__}") from None
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise GrafsError(f"callbacks must be grafs.Callback instances, got {type(cb).__name__}; "
                                 "subclass grafs.Callback and override the on_* methods you need")

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def _call(self, name: str, arg: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(arg)

    def on_search_start(self, info):
        self._call("on_search_start", info)

    def on_step_end(self, info):
        self._call("on_step_end", info)

    def on_epoch_end(self, info):
        self._call("on_epoch_end", info)

    def on_search_end(self, result):
        self._call("on_search_end", result)

    def on_eval_start(self, info):
        self._call("on_eval_start", info)

    def on_eval_run_end(self, info):
        self._call("on_eval_run_end", info)

    def on_eval_end(self, table):
        self._call("on_eval_end", table)


def epoch_info(history: dict, cell: RelaxedCell, epochs: int, warm: bool) -> EpochInfo:
    """The :class:`EpochInfo` of the epoch just appended to a search's ``history``."""
    epoch = history["epochs"][-1]
    entropy = history["entropy"][-1] if history.get("entropy") else hole_entropies(cell)
    return EpochInfo(
        epoch=epoch, epochs=epochs, train_loss=history["train_loss"][-1],
        val_loss=history["val_loss"][-1], train_acc=history["train_acc"][-1],
        val_acc=history["val_acc"][-1], num_active=history["num_active"][-1],
        holes=[h.name for h in cell.space.holes],
        active_ops=[list(ops) for ops in cell.active_ops()], alpha=active_alpha(cell),
        entropy=list(entropy), formula=history["formula"][-1],
        dropped=[(h, op) for e, h, op in history["dropped"] if e == epoch],
        seconds=history["seconds"][-1], warm=warm, gamma=list(history["gamma"][-1]))
