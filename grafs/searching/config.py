"""Training configurations: the hyper-parameters of a weight training (:class:`TrainConfig`)
and of a GRAFS search (:class:`SearchConfig`), validated on construction.

:class:`SearchConfig` is the one configuration of a search: ``grafs.search`` runs
``SearchConfig.auto()`` (the settings the studies support for any model) or
``SearchConfig.paper()``, and a built-in task is a model, data and its own ``SearchConfig``
run through the same ``grafs.search``. The budget rule (:func:`size_budget`) lives here too.

Configs are plain, JSON-serialisable dataclasses (``to_dict``/``from_dict``); the optimizer
and the learning-rate schedule are built from them by ``make_optimizer(params)`` and
``make_scheduler(optimizer, total_steps)``. Schedulers are *per optimizer step*: call
``scheduler.step()`` after every ``optimizer.step()``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from grafs.errors import GrafsError

__all__ = ["TrainConfig", "SearchConfig", "OPTIMIZERS", "SCHEDULES", "RESTART_SELECTS", "BUDGETS",
           "PRESETS", "size_budget", "arch_optimizer"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "multistep")
#: how restarts are compared (SearchConfig.restart_select)
RESTART_SELECTS = ("val_loss", "scratch")
#: "auto": the epochs sized from the data (or the ones given checked) by :func:`size_budget`;
#: "as_given": run the epochs given (a shorter run moves the warm start and first drop inside it)
BUDGETS = ("auto", "as_given")
PRESETS = ("auto", "paper")

#: The budget rule (docs/guide/search.md, "The budget"): the search needs at least this many
#: arch steps after the warm start before its first drop, and this many steps in all. Anchored
#: on the built-in tasks whose searches beat their baselines: mnist1d (47 arch steps after the
#: warm start before the first drop, 470 in all), teacher (144 and 1440), inr (100 and 600);
#: with digits' 17 and 170, α was still about uniform at the first drop.
MIN_STEPS_BEFORE_DROP = 100
MIN_TOTAL_STEPS = 500
#: the settings the ablations support for a model grafs knows nothing about: op-output
#: normalisation and arch_lr 3e-2 (the built-in tasks, docs/results-teacher.md), and no weight
#: decay on α (docs/results-own-models.md: with Adam, decay 1e-3 pulled α back to uniform,
#: entropy 0.995 at the first drop against 0.95 without; 7 of 9 own-model searches no worse
#: than the original activation against 6 of 9)
AUTO_ARCH_LR = 3e-2
AUTO_ARCH_WEIGHT_DECAY = 0.0
PAPER_ARCH_LR = 1e-3
PAPER_ARCH_WEIGHT_DECAY = 1e-3


def size_budget(steps_per_epoch: int, epochs: int | None = None, warmstart_epochs: int | None = None,
                shrink_start: int | None = None) -> tuple[int, int, int]:
    """(epochs, warmstart_epochs, shrink_start) that give α :data:`MIN_STEPS_BEFORE_DROP` arch
    steps after the warm start before the first drop and :data:`MIN_TOTAL_STEPS` in all; the
    values given are checked instead of chosen, and a GrafsError says what is missing."""
    spe = max(1, steps_per_epoch)
    warm = warmstart_epochs if warmstart_epochs is not None else max(1, math.ceil(50 / spe))
    start = shrink_start if shrink_start is not None else warm + math.ceil(MIN_STEPS_BEFORE_DROP / spe)
    need = max(math.ceil(MIN_TOTAL_STEPS / spe), start + 3)
    if epochs is None:
        return need, warm, start
    problems = []
    if (start - warm) * spe < MIN_STEPS_BEFORE_DROP:
        problems.append(f"{(start - warm) * spe} arch steps between the warm start and the first "
                        f"drop (needs {MIN_STEPS_BEFORE_DROP})")
    if epochs * spe < MIN_TOTAL_STEPS:
        problems.append(f"{epochs * spe} steps in all (needs {MIN_TOTAL_STEPS})")
    if problems:
        raise GrafsError(f"a search of {epochs} epochs × {spe} steps gives α "
                         + " and ".join(problems) + f": its drops would be close to random. "
                         f"Leave epochs out (budget='auto' sizes the search: {need} epochs here), "
                         f"or pass budget='as_given' to run it anyway")
    return epochs, warm, start


def arch_optimizer(params, lr: float, betas, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over α and γ, the fused implementation where the tensors' device has it: one
    kernel for all of them, where the default loops over them in Python (on the teacher task's
    MLP, 0.4 ms of a 1 ms plain step)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                            fused=True if fused else None)


def check_pos_int(owner: str, name: str, v: Any, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise GrafsError(f"{owner}.{name} must be a positive int"
                         f"{' or None' if allow_none else ''}, got {v!r}")


def _check_nonneg(owner: str, name: str, v: Any) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise GrafsError(f"{owner}.{name} must be a finite number >= 0, got {v!r}")


class _LRLambda:
    """Multiplier of the base lr at optimizer step ``s`` (picklable, unlike a closure)."""

    def __init__(self, schedule: str, total_steps: int, warmup_steps: int, min_lr_ratio: float,
                 milestones: Sequence[float], gamma: float):
        self.schedule = schedule
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.milestones = [int(round(m * self.total_steps)) for m in milestones]
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "multistep":
            return self.gamma ** sum(step >= m for m in self.milestones)
        # cosine from 1 (end of warm-up) down to min_lr_ratio at total_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class TrainConfig:
    """Hyper-parameters for training the network weights.

    Attributes:
        epochs: passes over the training data.
        batch_size: examples per forward pass (micro-batch).
        optimizer: "sgd" | "adam" | "adamw"; lr, momentum (SGD), betas (Adam/AdamW),
            weight_decay and nesterov (SGD) parametrise it.
        schedule: "constant" | "cosine" (to ``min_lr``) | "multistep" (×``gamma`` at the
            ``milestones``, given as fractions of the total number of optimizer steps);
            ``warmup_steps`` of linear warm-up first. Stepped once per optimizer step.
        grad_accum_steps: micro-batches per optimizer step.
        grad_clip: max global grad norm, or None.
        max_steps_per_epoch: cap on optimizer steps per epoch (an epoch is then a random
            subset of the data), or None for full passes.
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    grad_accum_steps: int = 1
    grad_clip: float | None = None
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        # a search's epochs may be None: sized from the data (budget "auto") or the paper's 10
        check_pos_int(owner, "epochs", self.epochs, allow_none=hasattr(self, "budget"))
        check_pos_int(owner, "batch_size", self.batch_size)
        check_pos_int(owner, "grad_accum_steps", self.grad_accum_steps)
        check_pos_int(owner, "max_steps_per_epoch", self.max_steps_per_epoch, allow_none=True)
        if self.optimizer not in OPTIMIZERS:
            raise GrafsError(f"{owner}.optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise GrafsError(f"{owner}.schedule must be one of {', '.join(SCHEDULES)}, "
                             f"got {self.schedule!r}")
        for name in ("lr", "momentum", "weight_decay", "min_lr", "gamma"):
            _check_nonneg(owner, name, getattr(self, name))
        if self.lr <= 0:
            raise GrafsError(f"{owner}.lr must be > 0, got {self.lr!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise GrafsError(f"{owner}.warmup_steps must be an int >= 0, "
                             f"got {self.warmup_steps!r}")
        if self.grad_clip is not None:
            _check_nonneg(owner, "grad_clip", self.grad_clip)
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise GrafsError(f"{owner}.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.milestones = tuple(float(m) for m in self.milestones)
        if any(not 0 < m <= 1 for m in self.milestones):
            raise GrafsError(f"{owner}.milestones are fractions of the total steps in (0, 1], "
                             f"got {self.milestones!r}")

    # -- builders ---------------------------------------------------------------------------
    def make_optimizer(self, params: Iterable[torch.Tensor] | Iterable[dict]) -> torch.optim.Optimizer:
        """The weight optimizer over ``params``."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay, nesterov=self.nesterov)
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)

    def make_scheduler(self, optimizer: torch.optim.Optimizer,
                       total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """Per-optimizer-step schedule over ``total_steps``; None for a constant lr."""
        if self.schedule == "constant" and not self.warmup_steps:
            return None
        fn = _LRLambda(self.schedule, total_steps, self.warmup_steps,
                       self.min_lr / self.lr, self.milestones, self.gamma)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)

    def steps_per_epoch(self, num_examples: int) -> int:
        """Optimizer steps in one epoch over ``num_examples`` examples."""
        micro = math.ceil(num_examples / self.batch_size)
        steps = math.ceil(micro / self.grad_accum_steps)
        if self.max_steps_per_epoch is not None:
            steps = min(steps, self.max_steps_per_epoch)
        return max(1, steps)

    def total_steps(self, num_examples: int) -> int:
        return self.epochs * self.steps_per_epoch(num_examples)

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise GrafsError(f"unknown {cls.__name__} fields {sorted(unknown)}; "
                             f"accepted: {', '.join(sorted(names))}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated); unknown names raise GrafsError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise GrafsError(f"unknown {type(self).__name__} fields {sorted(unknown)}; "
                             f"accepted: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)


@dataclass
class SearchConfig(TrainConfig):
    """:class:`TrainConfig` for the weights plus the outer (architecture) loop of GRAFS, the
    budget, and what a search measures after it: the one configuration of ``grafs.search``
    (``SearchConfig.auto()``, ``SearchConfig.paper()``) and of every built-in task.

    Attributes:
        arch_lr, arch_betas, arch_weight_decay: Adam over the cell's α and γ
            (the paper: betas (0.5, 0.999)).
        epochs: None: sized from the data (``budget="auto"``), else 10 (the paper).
        warmstart_epochs: E0, epochs whose weight steps use the original activation (None:
            sized, or 1).
        shrink_start_epoch: S, first epoch that drops ops (the paper: S = 2·E0; None: 2·E0,
            or earlier when the run is too short).
        train_fraction: share of the training data used for weight steps; the rest is the
            validation data of the architecture steps (the paper: 0.75).
        normalize: scale each candidate op's mixture weight by 1/RMS(op) on N(0, 1)
            (grafs.runtime.normalize; not in the paper, see docs/results-teacher.md).
        arch_steps: architecture steps (each on its own validation batch) per weight step
            (the paper: 1).
        arch_batch_size: examples per validation batch of an arch step; None: batch_size
            (the paper).
        single_level: train α/γ on the training batches, in one joint forward/backward with
            the weights (half a bilevel step's passes; not the paper's method, which is
            bilevel: see docs/results-teacher.md for the ablation).
        restarts: independent searches (seeds s, s + 1000, …, one split) of which the one with
            the lowest final validation loss is returned (grafs.searching.restarts; costs that many
            searches; the paper: 1).
        restart_pick_epoch: with restarts, compare them after this epoch (0-based) and run
            only the best one on (a race: cheaper than full restarts); None, or an epoch at
            or past the last: compare at the end.
        restart_splits: each restart on its own training/validation split (made with its
            seed) instead of one shared split; the losses compared are then estimates of the
            same loss on different validation data.
        restart_select: how restarts are compared: ``"val_loss"`` (the search's own
            validation loss, free) or ``"scratch"`` (each restart's formula trained from
            scratch once on the search split, scored by its validation loss: the quantity a
            user cares about, at the cost of one training run per restart).
        budget: ``"auto"``: epochs, warm start and first drop sized from the data by
            :func:`size_budget` when None, checked against it when given (a budget below what
            α needs is refused); ``"as_given"``: run them as given.
        check: after the search, train the found formula from scratch for a few steps; one
            that does not train is replaced by its clipped form (the function the search
            evaluated) or else by the model's original activation, and an affine one by the
            original, with a warning.
        verdict_seeds: from-scratch trainings of the found formula and of the original
            activation compared in ``result.verdict`` (0: no verdict).
        keep_original_if_worse: return the original activation when the verdict finds the
            found formula worse (``history["rejected_formula"]`` keeps it).
    """

    arch_lr: float = PAPER_ARCH_LR
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = PAPER_ARCH_WEIGHT_DECAY
    warmstart_epochs: int | None = 1
    shrink_start_epoch: int | None = 2
    train_fraction: float = 0.75
    normalize: bool = False
    arch_steps: int = 1
    arch_batch_size: int | None = None
    single_level: bool = False
    restarts: int = 1
    restart_pick_epoch: int | None = None
    restart_splits: bool = False
    restart_select: str = "val_loss"
    budget: str = "as_given"
    check: bool = True
    verdict_seeds: int = 0
    keep_original_if_worse: bool = True

    # -- presets ----------------------------------------------------------------------------
    @classmethod
    def auto(cls, **changes) -> "SearchConfig":
        """The settings the studies support for a model grafs knows nothing about (what
        ``grafs.search`` runs by default): op-output normalisation, ``arch_lr=3e-2``, no weight
        decay on α, Adam(1e-3) for the weights, batch 128, the budget sized from the data,
        restarts picked by training from scratch, the check and a 3-seed verdict."""
        return cls(**{**dict(epochs=None, warmstart_epochs=None, shrink_start_epoch=None,
                             batch_size=128, optimizer="adam", lr=1e-3, normalize=True,
                             arch_lr=AUTO_ARCH_LR, arch_weight_decay=AUTO_ARCH_WEIGHT_DECAY,
                             budget="auto", restart_select="scratch", check=True,
                             verdict_seeds=3), **changes})

    @classmethod
    def paper(cls, **changes) -> "SearchConfig":
        """The paper's settings (seeds/001): 10 epochs, E0 = 1, S = 2·E0, ``arch_lr=1e-3``
        with weight decay 1e-3, no normalisation, Adam(1e-3) for the weights, batch 128; no
        check, verdict or from-scratch pick."""
        return cls(**{**dict(epochs=10, warmstart_epochs=1, shrink_start_epoch=None,
                             batch_size=128, optimizer="adam", lr=1e-3, normalize=False,
                             arch_lr=PAPER_ARCH_LR, arch_weight_decay=PAPER_ARCH_WEIGHT_DECAY,
                             budget="as_given", restart_select="val_loss", check=False,
                             verdict_seeds=0), **changes})

    @classmethod
    def preset(cls, name: str, **changes) -> "SearchConfig":
        """``SearchConfig.auto()`` or ``SearchConfig.paper()`` by name."""
        if name not in PRESETS:
            raise GrafsError(f"preset must be one of {', '.join(map(repr, PRESETS))}, got {name!r}")
        return getattr(cls, name)(**changes)

    def for_epochs(self, epochs: int) -> "SearchConfig":
        """This configuration run for ``epochs`` epochs. With ``budget="as_given"`` the warm
        start and the first drop move inside a shorter run (as ``grafs search --epochs`` on a
        task always did); with ``"auto"`` the epochs are checked by the budget rule instead."""
        if self.budget == "auto" or self.epochs == epochs:
            return self.replace(epochs=epochs)
        warm = None if self.warmstart_epochs is None else min(self.warmstart_epochs, max(0, epochs - 1))
        start = self.shrink_start_epoch
        if start is not None:
            start = max(1, min(start, epochs - 1)) if epochs > 1 else None
        return self.replace(epochs=epochs, warmstart_epochs=warm, shrink_start_epoch=start)

    def epoch_plan(self, steps_per_epoch: int) -> tuple[int, int, int | None]:
        """(epochs, warmstart_epochs, shrink_start) of a search with ``steps_per_epoch`` steps
        per epoch: sized or checked by :func:`size_budget` (``budget="auto"``), else as given
        (where None: 10 epochs, warm start 1, the first drop at 2·E0)."""
        if self.budget == "auto":
            return size_budget(steps_per_epoch, self.epochs, self.warmstart_epochs,
                               self.shrink_start_epoch)
        epochs = 10 if self.epochs is None else self.epochs
        warm = 1 if self.warmstart_epochs is None else self.warmstart_epochs
        return epochs, warm, self.shrink_start_epoch

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if self.budget not in BUDGETS:
            raise GrafsError(f"{owner}.budget must be one of {', '.join(map(repr, BUDGETS))}, "
                             f"got {self.budget!r}")
        if not isinstance(self.arch_steps, int) or isinstance(self.arch_steps, bool) \
                or self.arch_steps < 1:
            raise GrafsError(f"{owner}.arch_steps must be an int >= 1, got {self.arch_steps!r}")
        if self.arch_batch_size is not None:
            check_pos_int(owner, "arch_batch_size", self.arch_batch_size)
        if not isinstance(self.arch_lr, (int, float)) or not self.arch_lr > 0:
            raise GrafsError(f"{owner}.arch_lr must be > 0, got {self.arch_lr!r}")
        _check_nonneg(owner, "arch_weight_decay", self.arch_weight_decay)
        self.arch_betas = tuple(float(b) for b in self.arch_betas)  # type: ignore[assignment]
        if len(self.arch_betas) != 2 or not all(0 <= b < 1 for b in self.arch_betas):
            raise GrafsError(f"{owner}.arch_betas must be two numbers in [0, 1), "
                             f"got {self.arch_betas!r}")
        for name in ("warmstart_epochs", "shrink_start_epoch"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise GrafsError(f"{owner}.{name} must be an int >= 0 or None, got {v!r}")
        warm, start = self.warmstart_epochs, self.shrink_start_epoch
        if start is not None and warm is not None and start < warm:
            raise GrafsError(f"{owner}.shrink_start_epoch ({start}) must be "
                             f">= warmstart_epochs ({warm})")
        if start is not None and self.epochs is not None and start >= self.epochs:
            raise GrafsError(f"{owner}.shrink_start_epoch ({start}) must be "
                             f"< epochs ({self.epochs}) so the cell can be discretized")
        if (not isinstance(self.train_fraction, (int, float)) or isinstance(self.train_fraction, bool)
                or not 0 < self.train_fraction < 1):
            raise GrafsError(f"{owner}.train_fraction must be a float in (0, 1), "
                             f"got {self.train_fraction!r}")
        for name in ("normalize", "single_level", "restart_splits", "check", "keep_original_if_worse"):
            if not isinstance(getattr(self, name), bool):
                raise GrafsError(f"{owner}.{name} must be True or False, "
                                 f"got {getattr(self, name)!r}")
        if self.single_level and self.arch_steps != 1:
            raise GrafsError(f"{owner}.single_level needs arch_steps=1 (one joint step per "
                             f"batch), got arch_steps={self.arch_steps}")
        if not isinstance(self.restarts, int) or isinstance(self.restarts, bool) \
                or self.restarts < 1:
            raise GrafsError(f"{owner}.restarts must be an int >= 1 (1: a single search), "
                             f"got {self.restarts!r}")
        if not isinstance(self.verdict_seeds, int) or isinstance(self.verdict_seeds, bool) \
                or self.verdict_seeds < 0:
            raise GrafsError(f"{owner}.verdict_seeds must be an int >= 0 (0: no verdict), "
                             f"got {self.verdict_seeds!r}")
        if self.restart_select not in RESTART_SELECTS:
            raise GrafsError(f"{owner}.restart_select must be one of "
                             f"{', '.join(map(repr, RESTART_SELECTS))}, got {self.restart_select!r}")
        pick = self.restart_pick_epoch
        # (the warm-start bound only where there is a race: one search ignores the pick;
        # no upper bound: a pick at or after the last epoch compares at the end, so a
        # shorter --epochs keeps working, as full restarts)
        if pick is not None and (not isinstance(pick, int) or isinstance(pick, bool)
                                 or (self.restarts > 1 and pick < (warm or 0))):
            raise GrafsError(f"{owner}.restart_pick_epoch must be None or an epoch after the warm "
                             f"start (>= warmstart_epochs={warm}), got {pick!r}"
                             f" (restarts={self.restarts}: give a later restart_pick_epoch, or "
                             f"None to compare the restarts at the end)")

    def make_arch_optimizer(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        """Adam(arch_lr, arch_betas, arch_weight_decay) over the activation parameters (the
        search's own, :func:`arch_optimizer`)."""
        return arch_optimizer(params, self.arch_lr, self.arch_betas, self.arch_weight_decay)
