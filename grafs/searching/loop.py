"""GRAFS: gradient-based activation function search (seeds/001 Algorithm 1).

``search(model, train_data, val_data)`` replaces the model's activations by one shared relaxed
cell, then for every training step

1. arch step: a fresh Dirichlet sample at every call site, loss on a validation batch,
   first-order Adam step on α and γ (betas (0.5, 0.999), weight decay); network grads zeroed;
2. weight step: a fresh sample, loss on the training batch, gradient accumulation, weight
   optimizer step — during the first ``warmstart_epochs`` epochs with the ORIGINAL activation.

Progressive shrinking drops ops at epoch starts on the log schedule (starting at 2·E0 by
default) so the cell is fully discrete by the last epoch; the result is the discretized formula.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from grafs.callbacks.events import CallbackList, SearchStart, StepInfo, epoch_info
from grafs.errors import GrafsError
from grafs.searching.checkpoint import (Interrupted, check_compatible, check_same_optimizer,
                                        checkpoint_file, optimizer_identity, read_checkpoint,
                                        resume_source, write_checkpoint)
from grafs.searching.data import (Batches, check_batches, check_data_arguments,
                                  resolve_device, split_dataset)
from grafs.searching.result import SearchResult, json_default
from grafs.searching.rng import rng_state, seed_everything, set_rng_state
from grafs.searching.searcher import Searcher, check_epochs, default_shrink_start
from grafs.searching.sites import DEFAULT_TYPES
from grafs.searching.losses import default_loss
from grafs.searching.step import AMP_DTYPES, Meter, Stepper, accuracy, check_finite

__all__ = ["search"]


def search(model: nn.Module, train_data, val_data=None, *, space=None, epochs: int = 10,
           warmstart_epochs: int = 1, shrink_start: int | None = None, seed: int = 0,
           batch_size: int = 128, loss_fn: Callable | None = None,
           optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
           scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
           arch_lr: float = 1e-3, arch_weight_decay: float = 1e-3,
           arch_betas: tuple[float, float] = (0.5, 0.999), arch_steps: int = 1,
           arch_batch_size: int | None = None, single_level: bool = False, grad_accumulation: int = 1,
           activation_types: Sequence[type] = DEFAULT_TYPES, cell_mode: str = "auto",
           device: str | torch.device | None = None, checkpoint_dir: str | os.PathLike | None = None,
           resume: str | os.PathLike | None = None, progress: bool = True,
           train_fraction: float = 0.75, max_steps_per_epoch: int | None = None,
           amp: str | None = None, check_every: int | None = None,
           callbacks: Iterable[Any] | None = None,
           distributed: bool | None = None,
           _stop_after_epoch: int | None = None,
           _progress_desc: str = "GRAFS search") -> SearchResult:
    """Run a GRAFS search and return the discretized activation (see module docstring).

    ``train_data``/``val_data``: (inputs, targets) tensors, a Dataset or a DataLoader; with no
    ``val_data`` the training data is split ``train_fraction``/rest (75/25). ``optimizer`` and
    ``scheduler`` are factories (``lambda params: torch.optim.SGD(params, 0.1)``,
    ``lambda opt: ...``; the scheduler steps after every weight-optimizer step); defaults:
    Adam(1e-3), no scheduler. ``loss_fn``: by default cross-entropy for integer targets and
    mean squared error for floating-point ones (regression).
    ``device``: where the search runs (default: the model's device); tensor data that fits is
    moved there once. ``amp``: None (fp32), "bf16" or "fp16" (autocast; fp16 with loss
    scaling); the cell computes in fp32 either way. ``cell_mode``: "auto" (the Triton cell on
    CUDA, the lean eager path elsewhere; see :class:`grafs.runtime.cell.RelaxedCell`), or a
    mode by name. ``check_every``: steps between the host syncs that check the losses for
    NaN/inf (default 1 on CPU, where a sync is free, 25 on accelerators). ``checkpoint_dir``
    gets ``checkpoint.pt`` after every epoch; ``resume`` continues from such a directory and
    gives exactly the result of the uninterrupted run with the same arguments.
    ``distributed``: data-parallel over a ``torch.distributed`` process group (see
    grafs.searching.distributed; launch with torchrun): None uses one if it is initialised, True also
    initialises it from torchrun's environment, False ignores it. ``batch_size`` is then per
    process; every rank returns the same result, and rank 0 alone writes checkpoints.
    ``callbacks``: :class:`grafs.Callback` instances told of every step and epoch (experiment
    tracking, e.g. :class:`grafs.TensorBoardLogger`; see grafs.callbacks).
    ``arch_steps``: arch steps (each on its own validation batch) per weight step.
    ``arch_batch_size``: examples per validation batch of an arch step (default
    ``batch_size``); a larger one averages the α gradient over more examples (less noise in
    the ops' ranking) for little more time where the cell's per-call cost dominates.
    ``single_level``: after warm start, one joint step per training batch trains the weights
    and α/γ from the same forward/backward (half the passes; the validation data then only
    gives the per-epoch validation loss). Not the paper's method, and it recovered fewer
    teacher activations (docs/results-teacher.md); the default is the bilevel step.
    """
    from grafs.runtime.space import SearchSpace
    arch_batch_size = _check_arguments(epochs, warmstart_epochs, grad_accumulation, arch_steps,
                                       arch_batch_size, batch_size, single_level, amp)
    check_data_arguments(batch_size, max_steps_per_epoch, train_fraction, val_data)
    cbs = CallbackList(callbacks)
    space = space or SearchSpace.grafs()
    dev = resolve_device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    from grafs.searching import distributed as gdist
    dist = gdist.context(distributed, dev, device is not None)
    if dist is not None:
        dev = dist.device
    if check_every is None:
        check_every = 1 if dev.type == "cpu" else 25
    if check_every < 1:
        raise GrafsError(f"check_every must be >= 1, got {check_every}")
    # shrinking starts at 2·E0 by default (the paper), or earlier if the run is too short for that
    start = shrink_start if shrink_start is not None else default_shrink_start(epochs, warmstart_epochs)
    # what a resume must match (checkpoint.check_compatible) and the result records
    settings = dict(epochs=epochs, warmstart_epochs=warmstart_epochs, shrink_start=start, seed=seed,
                    batch_size=batch_size, arch_lr=arch_lr, arch_weight_decay=arch_weight_decay,
                    arch_betas=list(arch_betas), grad_accumulation=grad_accumulation,
                    template=space.template, num_ops=space.num_ops, cell_mode=cell_mode,
                    max_steps_per_epoch=max_steps_per_epoch, amp=amp,
                    **_non_defaults(space, arch_steps, arch_batch_size, single_level))
    world = 1 if dist is None else dist.world_size
    if dist is not None:
        settings["world_size"] = world

    # the data, then the searcher: the order fixes what each draws from the seeded RNG
    seed_everything(seed if dist is None else dist.seed(seed))
    train, val = _batches(train_data, val_data, train_fraction, batch_size, arch_batch_size, seed,
                          dev, dist)
    model = model.to(dev)
    s = Searcher(model, space=space, epochs=epochs, warmstart_epochs=warmstart_epochs,
                 shrink_start=start, seed=seed, arch_lr=arch_lr, arch_betas=arch_betas,
                 arch_weight_decay=arch_weight_decay, amp=amp, cell_mode=cell_mode, device=dev,
                 activation_types=activation_types, distributed=dist if dist is not None else False)
    weights = s.weight_parameters()
    w_opt = optimizer(weights) if optimizer is not None else torch.optim.Adam(weights, lr=1e-3)
    w_sched = scheduler(w_opt) if scheduler is not None else None
    loss_fn = loss_fn or default_loss
    stepper = Stepper.of(s, w_opt, w_sched, loss_fn, grad_accumulation, single_level)
    if dist is not None:
        dist.sync_model(model)

    first_epoch, elapsed = 0, 0.0
    ckpt_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    resume = resume_source(resume, checkpoint_dir)
    if resume is not None:
        rp = checkpoint_file(resume)
        first_epoch, elapsed = _resume(rp, s, stepper, w_sched, settings, world, dev, dist)
        ckpt_path = ckpt_path or rp

    check_batches(train, val)
    steps_per_epoch = len(train) if max_steps_per_epoch is None else min(len(train), max_steps_per_epoch)
    cbs.on_search_start(SearchStart(dict(settings), [h.name for h in space.holes], epochs,
                                    first_epoch, steps_per_epoch, s.n_sites))
    bar = _progress_bar(progress and (dist is None or dist.rank == 0), epochs, first_epoch,
                        steps_per_epoch, _progress_desc)
    t_start = time.perf_counter() - elapsed
    epoch_run = _EpochRun(s, stepper, train, val, steps_per_epoch, arch_steps, single_level,
                          grad_accumulation, check_every, ckpt_path, dist, cbs, bar)
    try:
        for epoch in range(first_epoch, epochs):
            s.epoch_start(epoch)                        # progressive shrinking
            tot = epoch_run.train(epoch)                # arch + weight steps
            vl, va = _evaluate(model, val, epoch, loss_fn, dev, s.cell, ckpt_path, dist)
            formula = s.epoch_end(vl, val_acc=va, train_loss=tot["loss"] / max(tot["n"], 1),
                                  train_acc=tot["acc"] / tot["nacc"] if tot["nacc"] else None)
            if bar is not None:
                _print_epoch(bar, s, epoch, vl, va, formula)
            if ckpt_path is not None:
                _save(ckpt_path, s, epoch, stepper, w_sched, settings, t_start, world, dist)
            cbs.on_epoch_end(epoch_info(s.history, s.cell, epochs, s.is_warm(epoch)))
            if _stop_after_epoch is not None and epoch >= _stop_after_epoch:
                raise Interrupted(epoch)
    finally:
        if bar is not None:
            bar.close()
    settings["activation_sites"] = s.n_sites
    result = s.result(settings, time.perf_counter() - t_start)
    cbs.on_search_end(result)
    return result


def _non_defaults(space, arch_steps, arch_batch_size, single_level) -> dict:
    """The settings recorded only when they differ from the default (older checkpoints, which
    lack them, still resume)."""
    return {**({"normalize": True} if getattr(space, "normalize", False) else {}),
            **({"arch_steps": arch_steps} if arch_steps != 1 else {}),
            **({"arch_batch_size": arch_batch_size} if arch_batch_size else {}),
            **({"single_level": True} if single_level else {})}


def _progress_bar(show: bool, epochs: int, first_epoch: int, steps_per_epoch: int, desc: str):
    if not show:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=epochs * steps_per_epoch, initial=first_epoch * steps_per_epoch,
                desc=desc, unit="step", dynamic_ncols=True)


def _check_arguments(epochs, warmstart_epochs, grad_accumulation, arch_steps, arch_batch_size,
                     batch_size, single_level, amp) -> int | None:
    """Raise a GrafsError for a bad setting; returns arch_batch_size (None: the batch_size)."""
    check_epochs(epochs, warmstart_epochs)
    if grad_accumulation < 1:
        raise GrafsError(f"grad_accumulation must be >= 1, got {grad_accumulation}")
    if not isinstance(arch_steps, int) or arch_steps < 1:
        raise GrafsError(f"arch_steps (arch steps per weight step) must be an int >= 1, "
                         f"got {arch_steps!r}")
    if arch_batch_size is not None and (not isinstance(arch_batch_size, int)
                                        or isinstance(arch_batch_size, bool) or arch_batch_size < 1):
        raise GrafsError(f"arch_batch_size (examples per validation batch of an arch step) must "
                         f"be an int >= 1 or None (the batch_size), got {arch_batch_size!r}")
    if not isinstance(single_level, bool):
        raise GrafsError(f"single_level must be True or False, got {single_level!r}")
    if single_level and arch_steps != 1:
        raise GrafsError(f"single_level trains α on the training batches, one joint step per "
                         f"batch; arch_steps={arch_steps} needs the bilevel step (single_level=False)")
    if amp not in AMP_DTYPES:
        raise GrafsError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    # the default, spelt out, is the same run and settings
    return None if arch_batch_size == batch_size else arch_batch_size


def _batches(train_data, val_data, train_fraction, batch_size, arch_batch_size, seed, dev, dist):
    """The seeded training and validation batches (the 75/25 split when there is no val_data)."""
    if val_data is None:
        train_data, val_data = split_dataset(train_data, train_fraction, seed)
    shard = None if dist is None else dist.shard
    train = Batches(train_data, batch_size, seed, 0, "train_data", dev, shard)
    if arch_batch_size and isinstance(val_data, torch.utils.data.DataLoader):
        raise GrafsError("arch_batch_size applies to tensors or a Dataset as val_data; a DataLoader "
                         "brings its own batch size (set it there)")
    val = Batches(val_data, arch_batch_size or batch_size, seed, 1, "val_data", dev, shard)
    return train, val


class _EpochRun:
    """One epoch of steps: for each training batch, arch step(s) on validation batches, then
    the weight step (seeds/001 Algorithm 1, lines 4-9), with the loss meter's NaN checks."""

    def __init__(self, s: Searcher, stepper: Stepper, train: Batches, val: Batches,
                 steps_per_epoch, arch_steps, single_level, grad_accumulation, check_every,
                 ckpt_path, dist, cbs, bar):
        self.s, self.stepper, self.train_batches, self.val = s, stepper, train, val
        self.steps, self.arch_steps, self.single_level = steps_per_epoch, arch_steps, single_level
        self.grad_accumulation, self.check_every = grad_accumulation, check_every
        self.ckpt_path, self.dist, self.cbs, self.bar = ckpt_path, dist, cbs, bar

    def train(self, epoch: int) -> dict:
        """Run the epoch's steps; returns the loss and accuracy sums (over every rank)."""
        s, stepper, steps = self.s, self.stepper, self.steps
        warm = s.is_warm(epoch)
        s.model.train()
        meter = Meter(stepper.dev)
        self._val_iter = iter(self.val.epoch(epoch))
        stepper.w_opt.zero_grad(set_to_none=True)
        for step, (xb, yb) in enumerate(self.train_batches.epoch(epoch)):
            if step >= steps:
                break
            (xv, yv), more = self._val_batches(epoch, step, warm)
            update = (step + 1) % self.grad_accumulation == 0 or step + 1 == steps
            out, loss = stepper.step(xb, yb, xv, yv, warm=warm, update=update, more_val=more)
            meter.add(loss, out, yb, stepper.last_vloss)
            if self.cbs:
                self.cbs.on_step_end(StepInfo(epoch, step, epoch * steps + step, loss,
                                              stepper.last_vloss, warm))
            if (step + 1) % self.check_every == 0 or step + 1 == steps:
                meter.check(epoch, s.cell, self.ckpt_path, self.dist)   # the only host sync of a step
            if self.bar is not None:
                self.bar.update(1)
                if step % 10 == 0:
                    self.bar.set_postfix_str(f"ep {epoch + 1}/{s.epochs} ops {s.cell.num_active()} "
                                             f"loss {meter.last:.3f}" + (" warm" if warm else ""))
        tot = meter.totals()
        if self.dist is not None:  # the history is every rank's: sums over all shards
            tot = dict(zip(tot, self.dist.sum(*tot.values())))
            self.dist.average_buffers(s.model)
        return tot

    def _val_batches(self, epoch: int, step: int, warm: bool):
        """The validation batches of this step's arch steps (a single-level step takes none)."""
        vbs = [(None, None)] if self.single_level and not warm else []
        for j in range(self.arch_steps - len(vbs)):
            try:
                vbs.append(next(self._val_iter))
            except StopIteration:   # a fresh shuffle, seeded by where it happens
                self._val_iter = iter(self.val.epoch(epoch + 10_000 * (step + 1) + 1_000_000 * j))
                vbs.append(next(self._val_iter))
        return vbs[0], vbs[1:]


def _resume(path: Path, s: Searcher, stepper: Stepper, w_sched, settings, world, dev,
            dist) -> tuple[int, float]:
    """Load a checkpoint into the searcher and the weight optimizer; returns (next epoch, seconds)."""
    ck = read_checkpoint(path, dev) if dist is None else \
        dist.from_rank0(lambda: read_checkpoint(path, "cpu"))
    check_compatible(ck, path, settings, world)
    check_same_optimizer(ck, path, stepper.w_opt, w_sched)
    try:
        s.model.load_state_dict(ck["model"])
        stepper.w_opt.load_state_dict(ck["w_opt"])
        s.load_state_dict(ck)
        if w_sched is not None and "w_sched" in ck:
            w_sched.load_state_dict(ck["w_sched"])
        if "w_scaler" in ck:         # fp16: the loss scale reached (older checkpoints: none)
            stepper.w_scaler.load_state_dict(ck["w_scaler"])
    except (RuntimeError, ValueError, KeyError) as err:
        # same settings, another network (layers, widths, activation sites): torch names the
        # mismatch, grafs names the file and what to do
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
        first = " ".join(lines[:2])[:300]
        raise GrafsError(f"cannot resume from {path}: it was written by a search of another "
                         f"model with the same settings ({first}); resume with the model it was "
                         f"written for, or start without resume") from None
    set_rng_state(ck["rng"] if dist is None else ck["rng_ranks"][dist.rank])
    return int(ck["epoch"]) + 1, float(ck["elapsed"])


def _save(path: Path, s: Searcher, epoch, stepper: Stepper, w_sched, settings, t_start, world,
          dist) -> None:
    """Write the checkpoint of a finished epoch. Distributed: rank 0 writes, with every rank's
    RNG state, and tells the others how it went: when the write fails (a full disk), every
    rank stops at once with rank 0's GrafsError instead of waiting for it."""
    rngs = dist.gather(rng_state()) if dist is not None else None

    def write() -> None:
        ck = {"epoch": epoch, "model": s.model.state_dict(), "w_opt": stepper.w_opt.state_dict(),
              **s.state_dict(), "settings": json.dumps(settings, default=json_default),
              "rng": rng_state(), "elapsed": time.perf_counter() - t_start,
              "optimizer": optimizer_identity(stepper.w_opt, w_sched)}
        if w_sched is not None:
            ck["w_sched"] = w_sched.state_dict()
        if stepper.w_scaler.is_enabled():
            ck["w_scaler"] = stepper.w_scaler.state_dict()
        if dist is not None:
            ck.update(world_size=world, rng_ranks=rngs)
        write_checkpoint(ck, path)
    if dist is None:
        write()
    else:
        dist.from_rank0(write)


def _print_epoch(bar, s: Searcher, epoch: int, vl: float, va: float | None, formula: str) -> None:
    h = s.history
    short = formula if len(formula) < 70 else formula[:67] + "…"
    bar.write(f"epoch {epoch + 1:>3}/{s.epochs}  ops {s.cell.num_active():>3}  "
              f"train {h['train_loss'][-1]:.4f}  val {vl:.4f}"
              + (f"  val acc {va:.3f}" if va is not None else "") + f"  {short}")


@torch.no_grad()
def _evaluate(model, val: Batches, epoch, loss_fn, dev, cell, ckpt_path, dist=None):
    model.eval()
    tot_loss, tot_acc, n, nacc = 0.0, 0.0, 0, 0
    for xb, yb in val.epoch(epoch):
        xb, yb = xb.to(dev), yb.to(dev)
        out = model(xb)
        loss = loss_fn(out, yb)
        if dist is None:
            check_finite(loss, "validation", epoch, 0, cell, ckpt_path)
        tot_loss += float(loss) * len(xb)
        n += len(xb)
        acc = accuracy(out, yb)
        if acc is not None:
            tot_acc += acc * len(xb)
            nacc += len(xb)
    model.train()
    if dist is not None:  # over all shards; a NaN on any rank makes the sum NaN on every rank
        tot_loss, tot_acc, n, nacc = dist.sum(tot_loss, tot_acc, n, nacc)
        check_finite(torch.tensor(tot_loss), "validation", epoch, 0, cell, ckpt_path)
    return tot_loss / max(n, 1), (tot_acc / nacc if nacc else None)
