"""The evaluation protocol on a user's own model and data: ``grafs.evaluate``.

A task is a model, data and a configuration (grafs.tasks.base.Task); :func:`own_task` makes
one from a model builder and tensors, so the protocol's table, baselines, scaled baselines,
seeds and cache (grafs.protocol.evaluate) serve a user's model as they serve the built-in ones.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.protocol.baselines import BASELINES
from grafs.searching.sites import DEFAULT_TYPES, replace_activations
from grafs.searching.losses import check_first_pass, default_loss, mse
from grafs.tasks.base import Task, accuracy
from grafs.searching.config import SearchConfig, TrainConfig


class _OwnModel:
    """The task's model builder: the user's model with ``activation()`` at every site."""

    def __init__(self, make_model: Callable[[], nn.Module], types: Sequence[type]):
        self.make_model, self.types = make_model, tuple(types)

    def __call__(self, activation) -> nn.Module:
        model = self.make_model()
        if not isinstance(model, nn.Module):
            raise GrafsError(f"make_model must return an nn.Module, got {type(model).__name__}")
        replace_activations(model, lambda: activation(), self.types)
        return model


def _tensors(data, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if (not isinstance(data, (tuple, list)) or len(data) != 2
            or not all(isinstance(t, torch.Tensor) for t in data) or len(data[0]) != len(data[1])):
        raise GrafsError(f"{name} must be a pair of tensors (inputs, targets) of the same length")
    return data[0], data[1]


def own_task(make_model: Callable[[], nn.Module], train_data, test_data=None, *,
             name: str = "own model", loss_fn: Callable | None = None,
             metric: Callable | None = None, metric_name: str | None = None,
             higher_is_better: bool | None = None, epochs: int = 10, batch_size: int = 128,
             optimizer: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
             schedule: str = "constant", activation_types: Sequence[type] = DEFAULT_TYPES,
             seed: int = 0) -> Task:
    """A :class:`~grafs.tasks.base.Task` for ``make_model()`` (a fresh model with its own
    activation modules, e.g. nn.ReLU, at every site) on ``train_data`` and ``test_data``
    (tensor pairs; without ``test_data``, a seeded 20 % of ``train_data`` is held out). Integer
    targets: cross-entropy and accuracy by default; others: mean squared error (lower is
    better). Training: ``epochs`` of ``optimizer`` ("adam", "adamw", "sgd") at ``lr``."""
    x, y = _tensors(train_data, "train_data")
    if test_data is None:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(x), generator=g)
        n_test = max(1, len(x) // 5)
        (tx, ty), (x, y) = (x[perm[:n_test]], y[perm[:n_test]]), (x[perm[n_test:]], y[perm[n_test:]])
    else:
        tx, ty = _tensors(test_data, "test_data")
    classes = not y.is_floating_point()
    loss_fn = loss_fn or default_loss       # (cross-entropy for classes, else mse)
    metric = metric or (accuracy if classes else mse)
    if metric_name is None:
        metric_name = getattr(metric, "__name__", "metric")
    if higher_is_better is None:
        higher_is_better = metric is accuracy
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                      weight_decay=weight_decay, schedule=schedule)
    # grafs.search's own settings with this training recipe: a search of the task is the
    # search a user runs on the model (budget sized from the data)
    search = SearchConfig.auto(batch_size=batch_size, optimizer=optimizer, lr=lr,
                               weight_decay=weight_decay, schedule=schedule)
    return Task(name=name, description=f"{name}: your model and data", train_x=x, train_y=y,
                test_x=tx, test_y=ty, model_builder=_OwnModel(make_model, activation_types),
                default_activation=nn.ReLU, activation_types=tuple(activation_types),
                search_config=search, eval_config=cfg, loss_fn=loss_fn, metric=metric,
                metric_name=metric_name, higher_is_better=higher_is_better, seed=seed,
                info={"fingerprint": _fingerprint(make_model, (x, y, tx, ty), loss_fn, metric)})


def _fingerprint(make_model, tensors, loss_fn, metric) -> str:
    """What an evaluation run's cache key must hold of a user's task beyond its sizes and
    settings: the data's values, the model ``make_model`` builds (its layers and parameter
    shapes) and the loss and metric functions (their code: every lambda is ``<lambda>``), so
    that ``out_dir`` never returns the results of another model, data or loss."""
    import hashlib
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    model = make_model()
    if isinstance(model, nn.Module):
        h.update(str(model).encode())
        h.update(str([(n, tuple(p.shape)) for n, p in model.named_parameters()]).encode())
    for f in (loss_fn, metric):
        h.update(f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', repr(f))}".encode())
        code = getattr(f, "__code__", None)
        if code is not None:
            h.update(code.co_code + repr(code.co_consts).encode())
    return h.hexdigest()[:24]


def _first_pass(task: Task) -> None:
    """One forward and loss of the model on two training examples, before any run
    (:func:`~grafs.searching.losses.check_first_pass`): a setup error is one GrafsError now,
    not the same failure in every run of the table."""
    model = task.make_model(seed=task.seed)       # (GrafsError: no activation site)
    check_first_pass(model, task.train_x[:2], task.train_y[:2], task.loss_fn)


def evaluate(make_model: Callable[[], nn.Module], train_data, activations=(), *, test_data=None,
             seeds: int | Sequence[int] = 5, baselines: Sequence[str] = tuple(BASELINES),
             scaled_baselines: bool = False, epochs: int = 10, batch_size: int = 128,
             optimizer: str = "adam", lr: float = 1e-3, loss_fn: Callable | None = None,
             metric: Callable | None = None, device=None, progress: bool = True,
             out_dir: str | os.PathLike | None = None, jobs: int = 1, **task_options):
    """The evaluation protocol on your model: ``make_model()`` trained from scratch with each
    formula of ``activations`` (and each baseline) for each seed, scored on ``test_data`` (or
    20 % of ``train_data`` held out); returns the :class:`~grafs.protocol.evaluate.EvalTable`
    (mean ± SEM per row; ``print(table.markdown())``). ``scaled_baselines``: also the five
    baselines times their op-normalisation constant, the control for a found formula's gain.
    ``out_dir`` caches finished runs (a re-run skips them). Runs in this process (``jobs > 1``
    needs a built-in task: a user's model builder need not be picklable)."""
    from grafs.protocol.evaluate import evaluate as run_protocol
    from grafs.protocol.evaluate import scaled_baselines as scaled
    if jobs != 1:
        raise GrafsError(f"jobs={jobs!r}: worker processes need a built-in task (your model "
                         f"builder need not be picklable); evaluate your model with jobs=1")
    if isinstance(make_model, nn.Module):
        raise GrafsError("make_model must build a fresh model each call (e.g. lambda: MyNet()), "
                         "not be a model: every run trains one from scratch")
    task = own_task(make_model, train_data, test_data, epochs=epochs, batch_size=batch_size,
                    optimizer=optimizer, lr=lr, loss_fn=loss_fn, metric=metric, **task_options)
    _first_pass(task)
    named = dict(activations) if isinstance(activations, dict) else \
        {f"F{i + 1}": f for i, f in enumerate([activations] if isinstance(activations, str) else activations)}
    if scaled_baselines:
        named.update(scaled())
    return run_protocol(task, named, seeds=seeds, baselines=baselines, device=device,
                        progress=progress, out_dir=out_dir, backend="eager")
