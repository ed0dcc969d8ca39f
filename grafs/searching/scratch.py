"""Training a user's model from scratch with a formula, with the search's own recipe.

What a search's checks, its restart pick and its verdict are measured with: a fresh copy of
the model as the user passed it (re-initialised per seed through each module's
``reset_parameters``), the formula swapped in at the searched sites (or the original
activation kept), trained on the search's training split with the search's loss, optimizer,
scheduler, batch size and epochs, and scored by its loss on the search's validation split.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
from torch import nn

from grafs.searching.data import Batches
from grafs.searching.sites import replace_activations
from grafs.searching.losses import default_loss


#: steps of the quick from-scratch check (:meth:`ScratchTrainer.problem`)
CHECK_STEPS = 20


class ScratchTrainer:
    """Trains fresh copies of ``model`` (a template kept unchanged) with the search's recipe.

    What ``grafs.search`` measures formulas with (any object with :meth:`problem`,
    :meth:`val_loss` and ``runs`` will do: a built-in task passes its evaluation protocol,
    grafs.protocol.task_search.TaskScratch)."""

    def __init__(self, model: nn.Module, train_data, val_data, *, epochs: int, batch_size: int,
                 loss_fn: Callable | None, optimizer: Callable | None, scheduler: Callable | None,
                 activation_types: Sequence[type], device: torch.device,
                 max_steps_per_epoch: int | None = None, grad_accum_steps: int = 1):
        # a factory (seed -> model) builds each fresh model itself
        self.factory = None if isinstance(model, nn.Module) else model
        self.template = copy.deepcopy(model).cpu() if self.factory is None else None
        self.train_data, self.val_data = train_data, val_data
        self.epochs, self.batch_size = epochs, batch_size
        self.loss_fn = loss_fn or default_loss
        self.optimizer, self.scheduler = optimizer, scheduler
        self.types, self.device = tuple(activation_types), device
        # as the search: optimizer steps of grad_accum_steps micro-batches each (the scheduler
        # is sized in optimizer steps), at most max_steps_per_epoch of them per epoch
        self.accum = grad_accum_steps
        self.max_steps = max_steps_per_epoch
        self.runs = 0          # from-scratch trainings done (their cost is reported)
        if self.template is not None:
            _warn_unreset(self.template)

    def fresh_model(self, formula: str | None, seed: int) -> nn.Module:
        """A copy of the template, re-initialised under ``seed``, with ``formula`` at its
        activation sites (None keeps the original activations)."""
        torch.manual_seed(seed)
        if self.factory is not None:
            model = self.factory(seed)
        else:
            model = copy.deepcopy(self.template)
            for m in model.modules():
                # (nn.MultiheadAttention and nn.Transformer have only the private one)
                if _resets(m):
                    reset = getattr(m, "reset_parameters", None)
                    (reset if callable(reset) else m._reset_parameters)()
        if formula is not None:
            from grafs.compiler import compile as gcompile
            replace_activations(model, lambda: gcompile(formula, backend="eager"), self.types)
        return model.to(self.device)

    def problem(self, formula: str, seed: int = 0) -> str | None:
        """What stops ``formula`` from training from scratch with the search's recipe (a
        non-finite loss within :data:`CHECK_STEPS` steps), or None."""
        if math.isfinite(self.val_loss(formula, seed, max_steps=CHECK_STEPS)):
            return None
        return (f"does not train from scratch with the search's settings (a non-finite loss "
                f"within {CHECK_STEPS} steps)")

    def val_loss(self, formula: str | None, seed: int = 0, max_steps: int | None = None) -> float:
        """The validation loss after training from scratch; inf when a training or validation
        loss is not finite. ``max_steps``: stop after that many steps (a quick check)."""
        self.runs += 1
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            model = self.fresh_model(formula, seed)
            if not self._train(model, seed, max_steps):
                return math.inf
            return self._evaluate(model, seed)

    def _train(self, model: nn.Module, seed: int, max_steps: int | None) -> bool:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = self.optimizer(params) if self.optimizer is not None else torch.optim.Adam(params, lr=1e-3)
        sched = self.scheduler(opt) if self.scheduler is not None else None
        batches = Batches(self.train_data, self.batch_size, seed, 0, "train_data", self.device)
        per_epoch = len(batches) if self.max_steps is None else \
            min(len(batches), self.max_steps * self.accum)     # micro-batches
        model.train()
        done = 0
        for epoch in range(self.epochs):
            opt.zero_grad(set_to_none=True)
            for step, (xb, yb) in enumerate(batches.epoch(epoch)):
                if step >= per_epoch or (max_steps is not None and done >= max_steps):
                    break
                xb, yb = xb.to(self.device), yb.to(self.device)
                loss = self.loss_fn(model(xb), yb)
                if not torch.isfinite(loss.detach()):
                    return False
                (loss / self.accum).backward()
                done += 1
                if (step + 1) % self.accum == 0 or step + 1 == per_epoch:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if sched is not None:
                        sched.step()
        return True

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, seed: int) -> float:
        model.eval()
        total, n = 0.0, 0
        for xb, yb in Batches(self.val_data, self.batch_size, seed, 1, "val_data", self.device).epoch(0):
            xb, yb = xb.to(self.device), yb.to(self.device)
            loss = float(self.loss_fn(model(xb), yb))
            total += loss * len(xb)
            n += len(xb)
        out = total / max(n, 1)
        return out if math.isfinite(out) else math.inf


def _resets(m: nn.Module) -> bool:
    return callable(getattr(m, "reset_parameters", None)) or \
        callable(getattr(m, "_reset_parameters", None))


def _warn_unreset(model: nn.Module) -> None:
    """Warn when some of ``model``'s parameters belong to modules without ``reset_parameters``:
    every from-scratch run starts them from the values they have in the model as passed."""
    from grafs.errors import warn
    names = [f"{name or type(model).__name__}.{p}" for name, m in model.named_modules()
             if not _resets(m) for p, _ in m.named_parameters(recurse=False)]
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        warn(f"{shown}: parameters of modules without reset_parameters; the from-scratch runs "
             f"(check, restart pick, verdict) start them from your model's values for every "
             f"seed. Pass the model as a factory, seed -> nn.Module, for a fresh "
             f"initialisation per seed")


class OnRank0:
    """A from-scratch trainer whose runs happen on rank 0 alone, every rank getting the result
    (grafs.searching.distributed.Dist.from_rank0): every process of a data-parallel search
    must pick the same restart and return the same formula."""

    def __init__(self, trainer, dist):
        self.trainer, self.dist = trainer, dist

    @property
    def runs(self) -> int:
        return self.trainer.runs

    def problem(self, formula: str, seed: int = 0) -> str | None:
        return self.dist.from_rank0(lambda: self.trainer.problem(formula, seed))

    def val_loss(self, formula: str | None, seed: int = 0) -> float:
        return self.dist.from_rank0(lambda: self.trainer.val_loss(formula, seed))
