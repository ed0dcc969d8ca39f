"""The :class:`Task` record, training configurations and a minimal reference training loop.

A task bundles in-memory data tensors, a model builder with a pluggable activation, the
loss and the metric, and two sets of default hyper-parameters:

* ``search_config`` (:class:`SearchConfig`) for a GRAFS search (weights + architecture);
* ``eval_config`` (:class:`TrainConfig`) for training a model with a fixed activation from
  scratch (evaluation of a found formula).

Configs are plain, JSON-serialisable dataclasses (``to_dict``/``from_dict``); the optimizer
and the learning-rate schedule are built from them by ``make_optimizer(params)`` and
``make_scheduler(optimizer, total_steps)``. Schedulers are *per optimizer step*: call
``scheduler.step()`` after every ``optimizer.step()``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from grafs.errors import GrafsError
from grafs.models.common import ActivationFactory, check_activation_factory

__all__ = ["TrainConfig", "SearchConfig", "Task", "cross_entropy", "accuracy",
           "OPTIMIZERS", "SCHEDULES", "SPLITS"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "multistep")
SPLITS = ("train", "test", "search_train", "search_val")


def _check_pos_int(owner: str, name: str, v: Any, allow_none: bool = False) -> None:
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
        _check_pos_int(owner, "epochs", self.epochs)
        _check_pos_int(owner, "batch_size", self.batch_size)
        _check_pos_int(owner, "grad_accum_steps", self.grad_accum_steps)
        _check_pos_int(owner, "max_steps_per_epoch", self.max_steps_per_epoch, allow_none=True)
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
    """:class:`TrainConfig` for the weights plus the outer (architecture) loop of GRAFS.

    Attributes:
        arch_lr, arch_betas, arch_weight_decay: Adam over the cell's α and γ
            (the paper: betas (0.5, 0.999)).
        warmstart_epochs: E0, epochs whose weight steps use the original activation.
        shrink_start_epoch: S, first epoch that drops ops (the paper: S = 2·E0).
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
            the lowest final validation loss is returned (grafs.restarts; costs that many
            searches; the paper: 1).
        restart_pick_epoch: with restarts, compare them after this epoch (0-based) and run
            only the best one on (a race: cheaper than full restarts); None, or an epoch at
            or past the last: compare at the end.
        restart_splits: each restart on its own training/validation split (made with its
            seed) instead of one shared split; the losses compared are then estimates of the
            same loss on different validation data.
    """

    arch_lr: float = 1e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    warmstart_epochs: int = 1
    shrink_start_epoch: int = 2
    train_fraction: float = 0.75
    normalize: bool = False
    arch_steps: int = 1
    arch_batch_size: int | None = None
    single_level: bool = False
    restarts: int = 1
    restart_pick_epoch: int | None = None
    restart_splits: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if not isinstance(self.arch_steps, int) or isinstance(self.arch_steps, bool) \
                or self.arch_steps < 1:
            raise GrafsError(f"{owner}.arch_steps must be an int >= 1, got {self.arch_steps!r}")
        if self.arch_batch_size is not None:
            _check_pos_int(owner, "arch_batch_size", self.arch_batch_size)
        if not isinstance(self.arch_lr, (int, float)) or not self.arch_lr > 0:
            raise GrafsError(f"{owner}.arch_lr must be > 0, got {self.arch_lr!r}")
        _check_nonneg(owner, "arch_weight_decay", self.arch_weight_decay)
        self.arch_betas = tuple(float(b) for b in self.arch_betas)  # type: ignore[assignment]
        if len(self.arch_betas) != 2 or not all(0 <= b < 1 for b in self.arch_betas):
            raise GrafsError(f"{owner}.arch_betas must be two numbers in [0, 1), "
                             f"got {self.arch_betas!r}")
        for name in ("warmstart_epochs", "shrink_start_epoch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise GrafsError(f"{owner}.{name} must be an int >= 0, got {v!r}")
        if self.shrink_start_epoch < self.warmstart_epochs:
            raise GrafsError(f"{owner}.shrink_start_epoch ({self.shrink_start_epoch}) must be "
                             f">= warmstart_epochs ({self.warmstart_epochs})")
        if self.shrink_start_epoch >= self.epochs:
            raise GrafsError(f"{owner}.shrink_start_epoch ({self.shrink_start_epoch}) must be "
                             f"< epochs ({self.epochs}) so the cell can be discretized")
        if (not isinstance(self.train_fraction, (int, float)) or isinstance(self.train_fraction, bool)
                or not 0 < self.train_fraction < 1):
            raise GrafsError(f"{owner}.train_fraction must be a float in (0, 1), "
                             f"got {self.train_fraction!r}")
        for name in ("normalize", "single_level", "restart_splits"):
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
        pick = self.restart_pick_epoch
        # (the warm-start bound only where there is a race: one search ignores the pick;
        # no upper bound: a pick at or after the last epoch compares at the end, so a
        # shorter --epochs keeps working, as full restarts)
        if pick is not None and (not isinstance(pick, int) or isinstance(pick, bool)
                                 or (self.restarts > 1 and pick < self.warmstart_epochs)):
            raise GrafsError(f"{owner}.restart_pick_epoch must be None or an epoch after the warm "
                             f"start (>= warmstart_epochs={self.warmstart_epochs}), got {pick!r}"
                             f" (restarts={self.restarts}: give a later restart_pick_epoch, or "
                             f"None to compare the restarts at the end)")

    def make_arch_optimizer(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        """Adam(arch_lr, arch_betas, arch_weight_decay) over the activation parameters (the
        search's own, grafs.search_step.arch_optimizer)."""
        from grafs.search_step import arch_optimizer
        return arch_optimizer(params, self.arch_lr, self.arch_betas, self.arch_weight_decay)


# -- losses and metrics -----------------------------------------------------------------------
def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; (B, C) vs (B,) or sequence logits (B, T, V) vs (B, T)."""
    if logits.dim() == target.dim() + 1 and logits.dim() > 2:
        logits = logits.reshape(-1, logits.shape[-1])
        target = target.reshape(-1)
    return F.cross_entropy(logits.float(), target)


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of argmax predictions equal to the target (over all positions)."""
    return (logits.argmax(dim=-1) == target).float().mean()


@dataclass
class Task:
    """A built-in task: data, model builder, loss, metric, default hyper-parameters.

    ``metric(output, target)`` returns a scalar tensor, the mean over the batch's items;
    :meth:`evaluate` averages it over a split (weighted by item count).
    """

    name: str
    description: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    model_builder: Callable[[ActivationFactory], nn.Module] = field(repr=False)
    default_activation: ActivationFactory
    activation_types: tuple[type[nn.Module], ...]
    search_config: SearchConfig
    eval_config: TrainConfig
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(default=cross_entropy,
                                                                         repr=False)
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(default=accuracy,
                                                                        repr=False)
    metric_name: str = "accuracy"
    higher_is_better: bool = True
    extra_metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = \
        field(default_factory=dict, repr=False)
    #: metrics of a whole split computed from its averages (``fn(averages) -> float``) instead
    #: of averaged per batch, e.g. PSNR from the split's mean squared error
    split_metrics: dict[str, Callable[[dict[str, float]], float]] = \
        field(default_factory=dict, repr=False)
    #: factory of the default search space of :func:`grafs.search.search_task` (None: the
    #: paper's GRAFS space)
    search_space: Callable[[], Any] | None = field(default=None, repr=False)
    num_classes: int = 0
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- models -------------------------------------------------------------------------------
    def make_model(self, activation: ActivationFactory | None = None, *,
                   seed: int | None = None) -> nn.Module:
        """Build the task's model, calling ``activation`` (default: the task's) per site.

        Initialisation is deterministic: it draws from a private RNG seeded with ``seed``
        (default: the task's seed); the global torch RNG is left untouched.
        """
        activation = check_activation_factory(activation, self.default_activation)
        seed = self.seed if seed is None else seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.model_builder(activation)

    def make_search_space(self):
        """The search space a search on this task uses by default (``search_space``, or the
        paper's GRAFS space)."""
        from grafs.runtime.space import SearchSpace
        return self.search_space() if self.search_space is not None else SearchSpace.grafs()

    # -- data ---------------------------------------------------------------------------------
    @property
    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_x, self.train_y

    @property
    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_x, self.test_y

    def search_split(self, train_fraction: float | None = None, seed: int | None = None
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``((x_train, y_train), (x_val, y_val))``: a deterministic random split of the
        training data for the bilevel search (default fraction: ``search_config``'s)."""
        frac = self.search_config.train_fraction if train_fraction is None else train_fraction
        if not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise GrafsError(f"train_fraction must be in (0, 1), got {frac!r}")
        n = len(self.train_x)
        n_tr = min(n - 1, max(1, int(round(frac * n))))
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        perm = torch.randperm(n, generator=g)
        tr, va = perm[:n_tr], perm[n_tr:]
        return (self.train_x[tr], self.train_y[tr]), (self.train_x[va], self.train_y[va])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Data of split ``name``: one of 'train', 'test', 'search_train', 'search_val'."""
        if name == "train":
            return self.train_data
        if name == "test":
            return self.test_data
        if name in ("search_train", "search_val"):
            tr, va = self.search_split()
            return tr if name == "search_train" else va
        raise GrafsError(f"unknown split {name!r}; known splits: {', '.join(SPLITS)}")

    def batches(self, split: str | tuple[torch.Tensor, torch.Tensor] = "train",
                batch_size: int | None = None, *, shuffle: bool = True,
                seed: int | None = None, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` mini-batches of a split (or of an ``(x, y)`` pair).

        Shuffling uses a private generator seeded with ``seed`` (default: the task's seed).
        """
        x, y = self.split(split) if isinstance(split, str) else split
        bs = batch_size or self.eval_config.batch_size
        _check_pos_int("batches", "batch_size", bs)
        n = len(x)
        if shuffle:
            g = torch.Generator().manual_seed(self.seed if seed is None else seed)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        stop = n - n % bs if drop_last else n
        for i in range(0, stop, bs):
            idx = order[i:i + bs]
            yield x[idx], y[idx]

    def loader(self, split: str = "train", batch_size: int | None = None, *,
               shuffle: bool = True, seed: int | None = None,
               drop_last: bool = False) -> torch.utils.data.DataLoader:
        """A ``DataLoader`` over a split, reshuffled every epoch from a seeded generator."""
        x, y = self.split(split)
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=batch_size or
            self.eval_config.batch_size, shuffle=shuffle, generator=g, drop_last=drop_last)

    # -- evaluation and training --------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str | tuple[torch.Tensor, torch.Tensor] = "test",
                 batch_size: int | None = None, device: torch.device | str | None = None
                 ) -> dict[str, float]:
        """``{"loss": ..., metric_name: ..., **extra_metrics}`` averaged over a split
        (``split_metrics`` computed from those averages)."""
        was_training = model.training
        model.eval()
        device = device if device is not None else _model_device(model)
        sums: dict[str, float] = {}
        count = 0
        fns = {"loss": self.loss_fn, self.metric_name: self.metric, **self.extra_metrics}
        fns = {k: fn for k, fn in fns.items() if k not in self.split_metrics}
        try:
            for xb, yb in self.batches(split, batch_size or 256, shuffle=False):
                xb, yb = xb.to(device), yb.to(device)
                out = model(xb)
                for k, fn in fns.items():
                    sums[k] = sums.get(k, 0.0) + float(fn(out, yb)) * len(xb)
                count += len(xb)
        finally:
            model.train(was_training)
        if count == 0:
            raise GrafsError(f"split of task {self.name!r} is empty")
        res = {k: v / count for k, v in sums.items()}
        for k, fn in self.split_metrics.items():
            res[k] = float(fn(res))
        return res

    def fit(self, model: nn.Module, config: TrainConfig | None = None, *,
            epochs: int | None = None, max_steps: int | None = None, seed: int | None = None,
            data: tuple[torch.Tensor, torch.Tensor] | None = None,
            eval_every_epoch: bool = False, device: torch.device | str | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
        """Train ``model`` with ``config`` (default: ``eval_config``) — a plain reference loop.

        Returns a history: per-epoch mean training loss, epoch wall time and (if
        ``eval_every_epoch``) the test metrics; ``max_steps`` stops early (for tests).
        """
        cfg = config or self.eval_config
        n_epochs = cfg.epochs if epochs is None else epochs
        _check_pos_int("fit", "epochs", n_epochs)
        x, y = data if data is not None else self.train_data
        device = device if device is not None else _model_device(model)
        steps_per_epoch = cfg.steps_per_epoch(len(x))
        opt = cfg.make_optimizer([p for p in model.parameters() if p.requires_grad])
        sched = cfg.make_scheduler(opt, n_epochs * steps_per_epoch)
        hist: dict[str, list[float]] = {"train_loss": [], "epoch_time": []}
        seed = self.seed if seed is None else seed
        step = 0
        model.train()
        for epoch in range(n_epochs):
            t0 = time.perf_counter()
            total, nb, micro, ep_steps = 0.0, 0, 0, 0
            opt.zero_grad(set_to_none=True)
            for xb, yb in self.batches((x, y), cfg.batch_size, shuffle=True,
                                       seed=seed * 100003 + epoch):
                xb, yb = xb.to(device), yb.to(device)
                loss = self.loss_fn(model(xb), yb)
                if not torch.isfinite(loss):
                    raise GrafsError(f"non-finite training loss {float(loss.detach())} at epoch "
                                     f"{epoch}, step {step} of task {self.name!r}")
                (loss / cfg.grad_accum_steps).backward()
                total += loss.detach().item()
                nb += 1
                micro += 1
                if micro % cfg.grad_accum_steps == 0:
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if sched is not None:
                        sched.step()
                    step += 1
                    ep_steps += 1
                    if (max_steps is not None and step >= max_steps) or ep_steps >= steps_per_epoch:
                        break
            hist["train_loss"].append(total / max(1, nb))
            hist["epoch_time"].append(time.perf_counter() - t0)
            if eval_every_epoch:
                for k, v in self.evaluate(model, "test", device=device).items():
                    hist.setdefault(f"test_{k}", []).append(v)
            if log is not None:
                log(f"[{self.name}] epoch {epoch + 1}/{n_epochs} "
                    f"train_loss={hist['train_loss'][-1]:.4f} "
                    f"time={hist['epoch_time'][-1]:.1f}s")
            if max_steps is not None and step >= max_steps:
                break
        return hist

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description of the task (no tensors)."""
        return {
            "name": self.name, "description": self.description, "seed": self.seed,
            "num_train": len(self.train_x), "num_test": len(self.test_x),
            "input_shape": list(self.train_x.shape[1:]), "num_classes": self.num_classes,
            "metric": self.metric_name, "higher_is_better": self.higher_is_better,
            "search_space": repr(self.make_search_space()),
            "default_activation": getattr(self.default_activation, "__name__",
                                          repr(self.default_activation)),
            "activation_types": [t.__name__ for t in self.activation_types],
            "search_config": self.search_config.to_dict(),
            "eval_config": self.eval_config.to_dict(),
            "info": {k: v for k, v in self.info.items() if isinstance(v, (int, float, str))},
        }


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def check_option(task: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """Validate an integer data/model option of a task."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise GrafsError(f"task {task!r} option {name} must be an int >= {minimum}, "
                         f"got {value!r}")
    return value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=30", "normalize=false", "teacher=tanh(x)"]`` → task overrides (the command
    lines' ``--set KEY=VALUE``): each value parses as JSON (numbers, true/false, lists), else
    stays a string. Which keys a task accepts, :func:`apply_overrides` checks."""
    import json
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise GrafsError(f"--set expects KEY=VALUE with KEY a task option or config field "
                             f"(e.g. epochs=30, arch_lr=0.01, single_level=true), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _config_fields() -> tuple[set[str], set[str]]:
    """The field names of SearchConfig and of TrainConfig (what an override key may name)."""
    return ({f.name for f in dataclasses.fields(SearchConfig)},
            {f.name for f in dataclasses.fields(TrainConfig)})


def evaluation_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """The part of ``overrides`` that defines the task itself and its evaluation: data/model
    options (``teacher``, ``student_norm``, ``block_size`` …) and ``eval_<field>`` changes.
    Config fields shared by search and evaluation (``epochs``, ``lr`` …) and ``search_<field>``
    are left out, so a study that varies its search still evaluates every activation, found or
    baseline, with the task's own evaluation on the same task."""
    s_fields, e_fields = _config_fields()
    return {k: v for k, v in overrides.items()
            if not (k in s_fields or k in e_fields
                    or (k.startswith("search_") and k[7:] in s_fields))}


def apply_overrides(name: str, search: SearchConfig, evaluation: TrainConfig,
                    data_kwargs: dict[str, Any], overrides: dict[str, Any]
                    ) -> tuple[SearchConfig, TrainConfig, dict[str, Any]]:
    """Split ``overrides`` into data/model options and config changes.

    A config field name (``lr``, ``epochs`` …) changes both configs where it exists;
    ``search_<field>`` / ``eval_<field>`` change only one. Keys in ``data_kwargs`` (the
    task's data/model options with their defaults) replace those defaults.
    """
    s_fields, e_fields = _config_fields()
    s_changes: dict[str, Any] = {}
    e_changes: dict[str, Any] = {}
    data = dict(data_kwargs)
    unknown = []
    for key, value in overrides.items():
        if key in data_kwargs:
            data[key] = value
        elif key.startswith("search_") and key[7:] in s_fields:
            s_changes[key[7:]] = value
        elif key.startswith("eval_") and key[5:] in e_fields:
            e_changes[key[5:]] = value
        elif key in s_fields or key in e_fields:
            if key in s_fields:
                s_changes[key] = value
            if key in e_fields:
                e_changes[key] = value
        else:
            unknown.append(key)
    if unknown:
        accepted = (sorted(data_kwargs) + sorted(s_fields)
                    + ["search_<field>", "eval_<field>"])
        raise GrafsError(f"unknown option(s) {sorted(unknown)} for task {name!r}; "
                         f"accepted: {', '.join(accepted)}")
    if "epochs" in s_changes and isinstance(s_changes["epochs"], int) and s_changes["epochs"] >= 1:
        # keep a shorter search valid unless the user set the phases explicitly:
        # shrinking must start before the last epoch, warm-start must end before it
        last = s_changes["epochs"] - 1
        shrink = s_changes.get("shrink_start_epoch", search.shrink_start_epoch)
        warm = s_changes.get("warmstart_epochs", search.warmstart_epochs)
        if "shrink_start_epoch" not in s_changes and shrink > last:
            s_changes["shrink_start_epoch"] = shrink = last
        if "warmstart_epochs" not in s_changes and warm > shrink:
            s_changes["warmstart_epochs"] = shrink
    return search.replace(**s_changes), evaluation.replace(**e_changes), data
