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
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.rng import _rng_state, _set_rng_state, seed_everything
from grafs.runtime.discretize import centred, found_formula
from grafs.runtime.schedule import shrink_schedule
from grafs.search_data import _Batches, resolve_device, split_dataset
from grafs.search_result import SearchResult, _atomic_torch_save, _json_default
from grafs.search_step import (_AMP, _accuracy, _check_finite, _default_loss, _Meter, _Stepper,
                               arch_optimizer)
from grafs.sites import DEFAULT_TYPES, Act, SearchSite, replace_activations

# The search is split by job: sites.py (model surgery), search_data.py (batching),
# search_step.py (one step), search_result.py, rng.py, search_task.py (on a built-in task);
# the names stay importable from here.
__all__ = ["search", "search_task", "SearchResult", "Act", "SearchSite", "replace_activations",
           "resolve_device", "split_dataset", "seed_everything", "DEFAULT_TYPES", "scratch_val_loss"]


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
    Adam(1e-3), no scheduler.
    ``device``: where the search runs (default: the model's device); tensor data that fits is
    moved there once. ``amp``: None (fp32), "bf16" or "fp16" (autocast; fp16 with loss
    scaling); the cell computes in fp32 either way. ``cell_mode``: "auto" (the Triton cell on
    CUDA, the lean eager path elsewhere; see :class:`grafs.runtime.cell.RelaxedCell`), or a
    mode by name. ``check_every``: steps between the host syncs that check the losses for
    NaN/inf (default 1 on CPU, where a sync is free, 25 on accelerators). ``checkpoint_dir``
    gets ``checkpoint.pt`` after every epoch; ``resume`` continues from such a directory and
    gives exactly the result of the uninterrupted run with the same arguments.
    ``distributed``: data-parallel over a ``torch.distributed`` process group (see
    grafs.distributed; launch with torchrun): None uses one if it is initialised, True also
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
    from grafs.callbacks import CallbackList, SearchStart, StepInfo, epoch_info, hole_entropies
    from grafs.runtime.space import SearchSpace

    if epochs < 1:
        raise GrafsError(f"epochs must be >= 1, got {epochs}")
    if not 0 <= warmstart_epochs < epochs:
        raise GrafsError(f"warmstart_epochs must be in [0, epochs), got {warmstart_epochs} with epochs={epochs}")
    if grad_accumulation < 1:
        raise GrafsError(f"grad_accumulation must be >= 1, got {grad_accumulation}")
    if not isinstance(arch_steps, int) or arch_steps < 1:
        raise GrafsError(f"arch_steps (arch steps per weight step) must be an int >= 1, "
                         f"got {arch_steps!r}")
    if arch_batch_size is not None and (not isinstance(arch_batch_size, int)
                                        or isinstance(arch_batch_size, bool) or arch_batch_size < 1):
        raise GrafsError(f"arch_batch_size (examples per validation batch of an arch step) must "
                         f"be an int >= 1 or None (the batch_size), got {arch_batch_size!r}")
    if arch_batch_size == batch_size:
        arch_batch_size = None          # the default, spelt out: the same run and settings
    if not isinstance(single_level, bool):
        raise GrafsError(f"single_level must be True or False, got {single_level!r}")
    if single_level and arch_steps != 1:
        raise GrafsError(f"single_level trains α on the training batches, one joint step per "
                         f"batch; arch_steps={arch_steps} needs the bilevel step (single_level=False)")
    if amp not in _AMP:
        raise GrafsError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    cbs = CallbackList(callbacks)
    space = space or SearchSpace.grafs()
    dev = resolve_device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    from grafs import distributed as _dist
    dist = _dist.context(distributed, dev, device is not None)
    if dist is not None:
        dev = dist.device
    if check_every is None:
        check_every = 1 if dev.type == "cpu" else 25
    if check_every < 1:
        raise GrafsError(f"check_every must be >= 1, got {check_every}")
    # shrinking starts at 2·E0 by default (the paper), or earlier if the run is too short for that
    start = shrink_start if shrink_start is not None else max(1, min(2 * warmstart_epochs, epochs - 1))
    schedule = shrink_schedule(space.num_ops, len(space.holes), epochs, start) if epochs > 1 else {}
    settings = dict(epochs=epochs, warmstart_epochs=warmstart_epochs, shrink_start=start, seed=seed,
                    batch_size=batch_size, arch_lr=arch_lr, arch_weight_decay=arch_weight_decay,
                    arch_betas=list(arch_betas), grad_accumulation=grad_accumulation,
                    template=space.template, num_ops=space.num_ops, cell_mode=cell_mode,
                    max_steps_per_epoch=max_steps_per_epoch, amp=amp,
                    **({"normalize": True} if getattr(space, "normalize", False) else {}),
                    **({"arch_steps": arch_steps} if arch_steps != 1 else {}),
                    **({"arch_batch_size": arch_batch_size} if arch_batch_size else {}),
                    **({"single_level": True} if single_level else {}))
    world = 1 if dist is None else dist.world_size
    if dist is not None:
        settings["world_size"] = world

    seed_everything(seed if dist is None else dist.seed(seed))
    if val_data is None:
        train_data, val_data = split_dataset(train_data, train_fraction, seed)
    shard = None if dist is None else dist.shard
    train = _Batches(train_data, batch_size, seed, 0, "train_data", dev, shard)
    if arch_batch_size and isinstance(val_data, torch.utils.data.DataLoader):
        raise GrafsError("arch_batch_size applies to tensors or a Dataset as val_data; a DataLoader "
                         "brings its own batch size (set it there)")
    val = _Batches(val_data, arch_batch_size or batch_size, seed, 1, "val_data", dev, shard)

    model = model.to(dev)
    cell = space.relax(mode=cell_mode, seed=seed).to(dev)
    state = {"use_cell": True}
    n_sites = replace_activations(model, lambda orig: SearchSite(orig, cell, state), activation_types)
    arch_params = list(cell.arch_parameters())
    arch_ids = {id(p) for p in arch_params}
    weights = [p for p in model.parameters() if id(p) not in arch_ids]
    w_opt = optimizer(weights) if optimizer is not None else torch.optim.Adam(weights, lr=1e-3)
    w_sched = scheduler(w_opt) if scheduler is not None else None
    a_opt = arch_optimizer(arch_params, arch_lr, arch_betas, arch_weight_decay)
    loss_fn = loss_fn or _default_loss
    stepper = _Stepper(model, cell, state, weights, arch_params, w_opt, a_opt, w_sched, loss_fn,
                       dev, amp, grad_accumulation, n_sites, dist, single_level)
    if dist is not None:
        dist.sync_model(model)

    history: dict[str, list] = {k: [] for k in (
        "epochs", "train_loss", "val_loss", "train_acc", "val_acc", "num_active", "alpha",
        "gamma", "formula", "dropped", "seconds", "entropy")}
    first_epoch = 0
    elapsed = 0.0
    ckpt_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    if resume is not None:
        rp = Path(resume)
        rp = rp / "checkpoint.pt" if rp.is_dir() else rp
        try:
            ck = torch.load(rp, weights_only=True, map_location=dev) if dist is None else \
                dist.from_rank0(lambda: torch.load(rp, weights_only=True, map_location="cpu"))
        except (OSError, RuntimeError, EOFError) as err:
            raise GrafsError(f"cannot resume from {rp}: {err}") from None
        if int(ck.get("world_size", 1)) != world:
            raise GrafsError(f"cannot resume from {rp}: it was written by a search on "
                             f"{ck.get('world_size', 1)} process(es), this one runs on {world}; "
                             f"resume with the same number of processes")
        if json.loads(ck["settings"]) != json.loads(json.dumps(settings, default=_json_default)):
            raise GrafsError(f"cannot resume from {rp}: it was written by a search with other settings "
                             f"({ck['settings']})")
        model.load_state_dict(ck["model"])
        w_opt.load_state_dict(ck["w_opt"])
        a_opt.load_state_dict(ck["a_opt"])
        if w_sched is not None and "w_sched" in ck:
            w_sched.load_state_dict(ck["w_sched"])
        history = json.loads(ck["history"])
        first_epoch = int(ck["epoch"]) + 1
        elapsed = float(ck["elapsed"])
        _set_rng_state(ck["rng"] if dist is None else ck["rng_ranks"][dist.rank])
        if ckpt_path is None:
            ckpt_path = rp

    steps_per_epoch = len(train) if max_steps_per_epoch is None else min(len(train), max_steps_per_epoch)
    cbs.on_search_start(SearchStart(dict(settings), [h.name for h in space.holes], epochs,
                                    first_epoch, steps_per_epoch, n_sites))
    bar = None
    if progress and (dist is None or dist.rank == 0):
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs * steps_per_epoch, initial=first_epoch * steps_per_epoch,
                   desc=_progress_desc, unit="step", dynamic_ncols=True)
    t_start = time.perf_counter() - elapsed
    try:
        for epoch in range(first_epoch, epochs):
            t_epoch = time.perf_counter()
            if epoch in schedule:
                if epoch == min(schedule):
                    _warn_if_unlearned(cell, epoch, history)
                for hole, op in cell.drop(schedule[epoch]):
                    history["dropped"].append([epoch, hole, op])
            warm = epoch < warmstart_epochs
            model.train()
            meter = _Meter(dev)
            val_iter = iter(val.epoch(epoch))
            w_opt.zero_grad(set_to_none=True)
            for step, (xb, yb) in enumerate(train.epoch(epoch)):
                if step >= steps_per_epoch:
                    break
                # validation batches, one per arch step (a single-level step takes none)
                vbs = [(None, None)] if single_level and not warm else []
                for j in range(arch_steps - len(vbs)):
                    try:
                        vbs.append(next(val_iter))
                    except StopIteration:   # a fresh shuffle, seeded by where it happens
                        val_iter = iter(val.epoch(epoch + 10_000 * (step + 1) + 1_000_000 * j))
                        vbs.append(next(val_iter))
                (xv, yv), more = vbs[0], vbs[1:]
                out, loss = stepper.step(xb, yb, xv, yv, warm=warm,
                                         update=(step + 1) % grad_accumulation == 0
                                         or step + 1 == steps_per_epoch, more_val=more)
                meter.add(loss, out, yb, stepper.last_vloss)
                if cbs:
                    cbs.on_step_end(StepInfo(epoch, step, epoch * steps_per_epoch + step, loss,
                                             stepper.last_vloss, warm))
                if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                    meter.check(epoch, cell, ckpt_path, dist)   # the only host sync of a step
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix_str(f"ep {epoch + 1}/{epochs} ops {cell.num_active()} "
                                            f"loss {meter.last:.3f}" + (" warm" if warm else ""))
            tot = meter.totals()
            if dist is not None:  # the history is every rank's: sums over all shards
                tot = dict(zip(tot, dist.sum(*tot.values())))
                dist.average_buffers(model)
            state["use_cell"] = True
            vl, va = _evaluate(model, val, epoch, loss_fn, dev, cell, ckpt_path, dist)
            formula = str(cell.discretize())
            history["epochs"].append(epoch)
            history["train_loss"].append(tot["loss"] / max(tot["n"], 1))
            history["train_acc"].append(tot["acc"] / tot["nacc"] if tot["nacc"] else None)
            history["val_loss"].append(vl)
            history["val_acc"].append(va)
            history["num_active"].append(cell.num_active())
            history["alpha"].append([a.detach().cpu().tolist() for a in cell.alpha])
            history["gamma"].append(cell.gamma.detach().cpu().tolist())
            history["formula"].append(formula)
            history["seconds"].append(time.perf_counter() - t_epoch)
            history.setdefault("entropy", []).append(hole_entropies(cell))  # old checkpoints lack it
            if bar is not None:
                short = formula if len(formula) < 70 else formula[:67] + "…"
                bar.write(f"epoch {epoch + 1:>3}/{epochs}  ops {cell.num_active():>3}  "
                          f"train {history['train_loss'][-1]:.4f}  val {vl:.4f}"
                          + (f"  val acc {va:.3f}" if va is not None else "") + f"  {short}")
            # distributed: rank 0 writes, with every rank's RNG state; the others wait for it
            rngs = dist.gather(_rng_state()) if dist is not None and ckpt_path is not None else None
            if ckpt_path is not None and (dist is None or dist.rank == 0):
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                ck = {"epoch": epoch, "model": model.state_dict(), "w_opt": w_opt.state_dict(),
                      "a_opt": a_opt.state_dict(), "history": json.dumps(history, default=_json_default),
                      "settings": json.dumps(settings, default=_json_default), "rng": _rng_state(),
                      "elapsed": time.perf_counter() - t_start}
                if w_sched is not None:
                    ck["w_sched"] = w_sched.state_dict()
                if dist is not None:
                    ck.update(world_size=world, rng_ranks=rngs)
                _atomic_torch_save(ck, ckpt_path)
            if dist is not None and ckpt_path is not None:
                dist.barrier()
            cbs.on_epoch_end(epoch_info(history, cell, epochs, warm))
            if _stop_after_epoch is not None and epoch >= _stop_after_epoch:
                raise _Interrupted(epoch)
    finally:
        if bar is not None:
            bar.close()
    settings["activation_sites"] = n_sites
    found = found_formula(cell)
    if cell.scale is not None:
        # the same ops without the normalisation constants: a gain that helps a network without
        # normalisation layers (mnist1d) sinks a ResNet whose activation follows the residual
        # sum (textures), so both forms are kept (docs/results-textures.md)
        keep_x = found is not cell.discretize()          # (Exprs are interned)
        history["unscaled_formula"] = str(centred(cell.discretize(keep_x=keep_x, scaled=False)))
    zeroed = centred(found)
    if zeroed is not found:
        # minus its value at 0 (the next layer's bias absorbs a constant, a network trained
        # from scratch does not: grafs.runtime.discretize.centred); the cell's own is kept
        history["uncentred_formula"] = str(found)
        found = zeroed
    result = SearchResult(str(found), history, settings, time.perf_counter() - t_start,
                          {k: v.detach().cpu() for k, v in cell.state_dict().items()})
    cbs.on_search_end(result)
    return result


#: normalised entropy of the Dirichlet mean above which a hole's α has not told its ops apart;
#: measured on the teacher task (docs/results-teacher.md): a search whose ops were dropped at
#: random had 0.998–0.999 at its first drop, searches that recovered the teacher 0.97–0.98
UNLEARNED_ENTROPY = 0.995


def _warn_if_unlearned(cell, epoch: int, history: dict) -> None:
    """Warn when the first ops are about to be dropped while α is still about uniform."""
    import warnings
    from grafs.callbacks import hole_entropies
    from grafs.errors import GrafsWarning
    ent = hole_entropies(cell)
    if ent and min(ent) > UNLEARNED_ENTROPY:
        msg = (f"the search drops its first ops at epoch {epoch} while α is still about uniform "
               f"(normalised entropy of every hole's Dirichlet mean > {UNLEARNED_ENTROPY}: "
               f"min {min(ent):.4f}), so these drops are close to random; give α more arch steps "
               f"before shrinking (more epochs or steps per epoch, a later shrink_start) or a "
               f"larger arch_lr")
        history.setdefault("warnings", []).append(msg)
        warnings.warn(msg, GrafsWarning, stacklevel=3)


class _Interrupted(Exception):
    """Test hook: stop a search after an epoch as if the process had been killed."""


@torch.no_grad()
def _evaluate(model, val: _Batches, epoch, loss_fn, dev, cell, ckpt_path, dist=None):
    model.eval()
    tot_loss, tot_acc, n, nacc = 0.0, 0.0, 0, 0
    for xb, yb in val.epoch(epoch):
        xb, yb = xb.to(dev), yb.to(dev)
        out = model(xb)
        loss = loss_fn(out, yb)
        if dist is None:
            _check_finite(loss, "validation", epoch, 0, cell, ckpt_path)
        tot_loss += float(loss) * len(xb)
        n += len(xb)
        acc = _accuracy(out, yb)
        if acc is not None:
            tot_acc += acc * len(xb)
            nacc += len(xb)
    model.train()
    if dist is not None:  # over all shards; a NaN on any rank makes the sum NaN on every rank
        tot_loss, tot_acc, n, nacc = dist.sum(tot_loss, tot_acc, n, nacc)
        _check_finite(torch.tensor(tot_loss), "validation", epoch, 0, cell, ckpt_path)
    return tot_loss / max(n, 1), (tot_acc / nacc if nacc else None)


# search on a built-in task, and the checks after it: grafs/search_task.py (importable from here)
from grafs.search_task import _clipped_formula, scratch_val_loss, search_task  # noqa: E402,F401
