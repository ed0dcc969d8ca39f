"""The :class:`Task` record, a minimal reference training loop, and task overrides.

A task bundles in-memory data tensors, a model builder with a pluggable activation, the
loss and the metric, and two sets of default hyper-parameters (grafs.searching.config):

* ``search_config`` (:class:`~grafs.searching.config.SearchConfig`) for a GRAFS search (weights +
  architecture);
* ``eval_config`` (:class:`~grafs.searching.config.TrainConfig`) for training a model with a
  fixed activation from scratch (evaluation of a found formula).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models.common import ActivationFactory, check_activation_factory
from grafs.searching.config import SearchConfig, TrainConfig, check_pos_int
from grafs.searching.losses import cross_entropy, mse

__all__ = ["Task", "cross_entropy", "accuracy", "mse", "SPLITS", "apply_overrides", "check_option",
           "evaluation_overrides", "parse_overrides"]

SPLITS = ("train", "test", "search_train", "search_val")


# -- losses and metrics -----------------------------------------------------------------------
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
    #: factory of the default search space of :func:`grafs.protocol.task_search.search_task` (None: the
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
        check_pos_int("batches", "batch_size", bs)
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
        check_pos_int("fit", "epochs", n_epochs)
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
