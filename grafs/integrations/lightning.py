"""Lightning: search a LightningModule's activations inside ``Trainer.fit`` (``pip install grafs[lightning]``).

    from grafs.lightning import GrafsSearch
    search = GrafsSearch()                    # options of grafs.Searcher: space, arch_lr, ...
    trainer = lightning.Trainer(max_epochs=20, callbacks=[search])
    trainer.fit(module, datamodule)
    search.result.formula                     # a grafs.SearchResult

The callback drives a :class:`grafs.Searcher` (the calls of docs/guide/own-loop.md) from
Lightning's hooks:

* ``setup``: the module's activations become the relaxed cell's sites, before
  ``configure_optimizers`` (an optimizer over ``self.parameters()`` holds α/γ but never
  changes them: their grad is None whenever it steps); under DDP the cell's parameters and
  buffers are left out of DDP's reducer, and α/γ gradients are averaged by the callback;
* ``on_train_epoch_start``: drops ops on the shrink schedule; warm start in the first epochs;
* ``on_train_batch_start``: an arch step on the next validation batch (``arch_data``) whose
  loss is the module's own ``training_step`` (``arch_loss`` overrides; its ``self.log`` calls
  are muted), under the Trainer's precision plugin (autocast; "16-mixed" also scales α's
  loss); then α/γ are frozen until ``on_train_batch_end``, so ``training_step``'s backward
  (and gradient accumulation, clipping, the optimizer) only see the weights;
* ``on_train_end``: :attr:`GrafsSearch.result`.

The callback's ``state_dict`` (in every Lightning checkpoint) holds the search's state and the
RNG state of each rank, so ``trainer.fit(..., ckpt_path=...)`` resumes to the formula the
uninterrupted run finds. Only the ``lightning`` package (``lightning.pytorch``) is supported,
not the older ``pytorch_lightning`` one.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from grafs.errors import GrafsError, warn
from grafs.searching.data import cycle
from grafs.searching.result import SearchResult
from grafs.searching.rng import rng_state, set_rng_state
from grafs.searching.searcher import Searcher

__all__ = ["GrafsSearch"]


class GrafsSearch(Callback):
    """Search the activation of the LightningModule that ``Trainer.fit`` trains.

    ``epochs``: the epochs the search spans (default: the Trainer's ``max_epochs``); later
    epochs train with the discrete cell. ``arch_data``: where the arch steps' batches come
    from: "val" (the Trainer's validation dataloader, else the DataModule's), "train" (a second
    pass over the training dataloader) or any DataLoader/iterable of batches (e.g. over a
    split of your training set: :func:`grafs.searching.split_dataset`); it is read in order,
    restarting at each epoch and when it runs out. ``arch_every``: an arch step every that
    many training batches. ``arch_loss(module, batch) -> loss``: the arch step's loss
    (default: ``module.training_step(batch, batch_idx)``, its ``"loss"`` if a dict).
    ``monitor``/``train_monitor``: the logged metrics recorded in the history as each epoch's
    validation and training loss. ``restore_rng``: a resumed fit restores every library's
    global RNG state as it was when the checkpoint was written (the Dirichlet draws and
    shuffles then repeat the uninterrupted run's). Other keywords go to
    :class:`grafs.Searcher` (``space``, ``arch_lr``, ``warmstart_epochs``, ``shrink_start``,
    ``seed``, ``activation_types``, ...).
    """

    def __init__(self, epochs: int | None = None, *, arch_data: Any = "val", arch_every: int = 1,
                 arch_loss: Callable[[LightningModule, Any], torch.Tensor] | None = None,
                 monitor: str = "val_loss", train_monitor: str = "train_loss",
                 restore_rng: bool = True, **searcher_options):
        if not isinstance(arch_every, int) or arch_every < 1:
            raise GrafsError(f"arch_every must be an int >= 1, got {arch_every!r}")
        if isinstance(arch_data, str) and arch_data not in ("val", "train"):
            raise GrafsError(f"arch_data must be 'val', 'train' or a DataLoader, got {arch_data!r}")
        self.epochs, self.arch_data, self.arch_every = epochs, arch_data, arch_every
        self.arch_loss, self.monitor, self.train_monitor = arch_loss, monitor, train_monitor
        self.restore_rng = restore_rng
        self.options = searcher_options
        self._reset()

    def _reset(self) -> None:
        self.searcher: Searcher | None = None
        #: the found formula and the search's history, once ``fit`` has trained
        self.result: SearchResult | None = None
        self._open = False              # an epoch started and not yet recorded
        self._pending: dict = {}        # the open epoch's logged losses
        self._rng = None                # the RNG state a resumed fit starts from
        self._loader = self._batches = None

    # -- set-up --------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.searcher is not None:
            if self.searcher.model is not pl_module:
                self._reset()           # another module: a search of its own
            elif self.result is None:
                return                  # this search, fitted again (e.g. from a checkpoint)
            else:
                raise GrafsError("GrafsSearch already searched this module (its activations are "
                                 "the found cell now); to train it on, fit without the callback; "
                                 "for another search, a fresh module")
        epochs = self.epochs if self.epochs is not None else trainer.max_epochs
        if not isinstance(epochs, int) or epochs < 1:
            raise GrafsError(f"GrafsSearch needs the number of epochs the search spans: "
                             f"Trainer(max_epochs=...) or GrafsSearch(epochs=...), got {epochs!r}")
        if self.arch_loss is None and not pl_module.automatic_optimization:
            raise GrafsError("with manual optimization, training_step steps your optimizers, so "
                             "GrafsSearch cannot call it for the arch step's loss: pass "
                             "GrafsSearch(arch_loss=lambda module, batch: <the loss>)")
        options = {"device": trainer.strategy.root_device,
                   "loss_scaling": str(trainer.precision).startswith("16"), **self.options}
        self.searcher = Searcher(pl_module, epochs=epochs, **options)
        _leave_out_of_ddp(pl_module, self.searcher)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rng = None
        self._loader = self._arch_loader(trainer)

    def _arch_loader(self, trainer: Trainer):
        src = self.arch_data
        if not isinstance(src, str):
            return src
        if src == "train":
            return _first(trainer.train_dataloader)
        loader = _first(trainer.val_dataloaders)
        if loader is None and trainer.datamodule is not None:
            loader = _first(trainer.datamodule.val_dataloader())
        if loader is None:
            raise GrafsError("GrafsSearch takes its arch steps' batches from the validation data, "
                             "but this fit has none: pass val_dataloaders (or a DataModule with "
                             "val_dataloader), or GrafsSearch(arch_data='train' or a DataLoader)")
        return loader

    # -- epochs and batches ------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close_epoch()
        epoch = trainer.current_epoch
        if epoch < self.searcher.epochs:
            self.searcher.epoch_start(epoch)
            self._open = True
        self._batches = cycle(self._loader)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        s = self.searcher
        if self._batches is None:       # (a fit resumed in the middle of an epoch)
            self._batches = cycle(self._loader)
        if self._open and batch_idx % self.arch_every == 0:
            vb = trainer.strategy.batch_to_device(next(self._batches))
            s.arch_step(lambda: self._loss(trainer, pl_module, vb, batch_idx))
        s.weight_step_begin()

    def _loss(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int):
        with trainer.precision_plugin.forward_context(), _muted(pl_module):
            out = (self.arch_loss(pl_module, batch) if self.arch_loss is not None
                   else pl_module.training_step(batch, batch_idx))
        if isinstance(out, Mapping):
            out = out["loss"]
        if not isinstance(out, torch.Tensor):
            raise GrafsError(f"the arch step needs a loss tensor from training_step (or "
                             f"arch_loss), got {type(out).__name__}")
        return out

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self.searcher.weight_step_end()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception) -> None:
        if self.searcher is not None:
            self.searcher.weight_step_end()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and self._open:
            self._record(trainer, self.monitor, "val_loss")

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._rng is not None:       # the sanity check's batches drew samples
            set_rng_state(self._rng)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._open:
            self._record(trainer, self.train_monitor, "train_loss")
            self._record(trainer, self.monitor, "val_loss")

    def _record(self, trainer: Trainer, metric: str, key: str) -> None:
        value = trainer.callback_metrics.get(metric)
        if value is not None:
            self._pending[key] = float(value)

    def _close_epoch(self) -> None:
        if self._open:
            self.searcher.epoch_end(self._pending.get("val_loss"),
                                    train_loss=self._pending.get("train_loss"))
            self._open, self._pending = False, {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close_epoch()
        s = self.searcher
        settings = {**s.settings, "integration": "lightning", "precision": str(trainer.precision),
                    "accumulate_grad_batches": trainer.accumulate_grad_batches,
                    "arch_every": self.arch_every}
        self.result = s.result(settings)
        if s.next_epoch < s.epochs:
            # (max_epochs below the search's epochs, early stopping, an interrupted fit)
            msg = (f"the fit ended after {s.next_epoch} of the search's {s.epochs} epochs, before "
                   f"the cell was discrete: {self.result.formula} is the leading formula of an "
                   f"unfinished search (give the Trainer max_epochs >= GrafsSearch's epochs)")
            self.result.history.setdefault("warnings", []).append(msg)
            warn(msg)

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.searcher is None:
            return {}
        rng = rng_state()
        dist = self.searcher.dist
        if dist is not None:        # (Lightning writes checkpoints from every rank's dump)
            rngs: list = [None] * dist.world_size
            torch.distributed.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        return {"searcher": self.searcher.state_dict(), "open": self._open,
                "pending": dict(self._pending), "rng_ranks": rngs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.searcher is None:
            raise GrafsError("GrafsSearch state loaded before setup: restore it through "
                             "trainer.fit(..., ckpt_path=...)")
        self.searcher.load_state_dict(state_dict["searcher"])
        self._open, self._pending = bool(state_dict["open"]), dict(state_dict["pending"])
        rngs = state_dict.get("rng_ranks") or []
        dist = self.searcher.dist
        rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
        if self.restore_rng and len(rngs) == world:
            self._rng = rngs[rank]
            set_rng_state(self._rng)


def _first(loaders):
    """One dataloader of what Lightning holds (a list or dict of them, or one)."""
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    if isinstance(loaders, Mapping):
        return next(iter(loaders.values()), None)
    return loaders


@contextlib.contextmanager
def _muted(module: LightningModule):
    """``self.log``/``self.log_dict`` do nothing: the arch step's call of training_step must
    not count as a training step in the logged metrics."""
    def quiet(*args, **kwargs):
        return None
    module.log, module.log_dict = quiet, quiet
    try:
        yield
    finally:
        del module.log, module.log_dict


def _leave_out_of_ddp(module: torch.nn.Module, searcher: Searcher) -> None:
    """Have DDP ignore the cell's parameters and buffers (every name the shared cell has in the
    module): α/γ are frozen in the training step and averaged by the searcher after each arch
    step, and DDP's reducer would wait for gradients they never get there."""
    cell_tensors = {id(t) for t in (*searcher.cell.parameters(), *searcher.cell.buffers())}
    names = [n for n, t in (*module.named_parameters(remove_duplicate=False),
                            *module.named_buffers(remove_duplicate=False)) if id(t) in cell_tensors]
    ignored = list(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))
    from torch.nn.parallel import DistributedDataParallel
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        module, ignored + [n for n in names if n not in ignored])
