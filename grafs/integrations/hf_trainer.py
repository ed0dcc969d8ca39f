"""Hugging Face ``Trainer``: search a transformers model's activation inside ``trainer.train()``
(``pip install grafs[hf]``).

    cb = GrafsTrainerCallback(name="found_act")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    cb.attach(trainer)                       # arch steps on trainer.get_eval_dataloader()
    trainer.train()
    config.hidden_act = "found_act"          # the found formula, registered under that name

A :class:`grafs.Searcher` replaces the activation modules the config's activation name builds
(``config.hidden_act``, ``activation_function``, ...: e.g. every ``GELUActivation``; other
activations, such as BERT's pooler tanh, stay) by the relaxed cell, and the callback drives
it from the Trainer's events, with dict batches (``model(**batch).loss``):

* the run's optimizer steps are split into ``search_epochs`` equal phases; the shrink
  schedule drops ops at each phase's start (the first ``warmstart_epochs`` phases train the
  weights with the original activation);
* ``on_step_begin``: every ``arch_every`` optimizer steps, an arch step on the next eval
  batch; then α/γ are frozen through the step's micro-batches (the Trainer's optimizer, built
  before the search swapped the activations, never holds them);
* ``on_train_end``: :attr:`GrafsTrainerCallback.result`, and the formula registered as
  ``name`` (:func:`grafs.register`), so a model configured with it trains the formula.

Under DDP each rank averages the α/γ gradients of its arch step with the others' (through
``torch.distributed``), so every rank registers the same formula. Not saved in the Trainer's
checkpoints: a resumed ``train()`` starts the search anew over the steps it has left. The
checkpoints hold one copy of the cell that every site shares (safetensors refuses aliases).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch

from grafs.errors import GrafsError, warn
from grafs.integrations.registry import check_name, register
from grafs.searching.data import cycle
from grafs.searching.result import SearchResult
from grafs.searching.searcher import Searcher

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - the hf extra is missing
    raise ImportError("grafs.integrations.hf_trainer needs transformers: pip install grafs[hf]") from err

__all__ = ["GrafsTrainerCallback"]

#: config attributes that name a transformers model's activation (ACT2FN keys)
ACT_KEYS = ("hidden_act", "activation_function", "hidden_activation", "act_fn")


class GrafsTrainerCallback(TrainerCallback):
    """Search the activation of the model a Hugging Face ``Trainer`` trains.

    ``name``: the name the found formula is registered under at the end (for
    ``config.<act key> = name``; ``backend`` is its compile backend). ``search_epochs``: the
    phases of the search over the run's optimizer steps. ``arch_every``: an arch step every that
    many optimizer steps. ``arch_data``: the arch steps' batches: a DataLoader, a Dataset
    (batched with the training dataloader's collator) or None (the Trainer's eval dataloader:
    call :meth:`attach`). ``arch_loss(model, batch) -> loss``: default ``model(**batch).loss``.
    Other keywords go to :class:`grafs.Searcher` (``space``, ``arch_lr``, ``warmstart_epochs``,
    ``seed``, ``activation_types``: default the class the config's activation name builds).
    """

    def __init__(self, name: str = "grafs_found", *, search_epochs: int = 10, arch_every: int = 1,
                 arch_data: Any = None,
                 arch_loss: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
                 backend: str = "inductor", **searcher_options):
        if not isinstance(arch_every, int) or arch_every < 1:
            raise GrafsError(f"arch_every must be an int >= 1, got {arch_every!r}")
        import transformers.activations  # noqa: F401  (so its names are checked too)
        check_name(name)        # now, not when train() ends (the name is registered then)
        self.name, self.search_epochs, self.arch_every = name, search_epochs, arch_every
        self.arch_data, self.arch_loss, self.backend = arch_data, arch_loss, backend
        self.options = searcher_options
        self.searcher: Searcher | None = None
        #: the found formula and the search's history, once ``train()`` has finished
        self.result: SearchResult | None = None
        #: the config attribute that names the activation (e.g. "hidden_act")
        self.act_key: str | None = None
        self._phase = -1
        self._pending: dict = {}
        self._batches = None
        self._max_steps, self._first_step = 1, 0

    def attach(self, trainer) -> "GrafsTrainerCallback":
        """Add this callback to ``trainer`` with its eval dataloader as the arch data (unless
        ``arch_data`` was given)."""
        if self.arch_data is None:
            self.arch_data = trainer.get_eval_dataloader()
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def use_in(self, config):
        """``config`` with its activation set to the registered name (after ``train()``)."""
        if self.result is None:
            raise GrafsError("no formula yet: use_in(config) after trainer.train()")
        setattr(config, self.act_key, self.name)
        return config

    # -- events ----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, train_dataloader=None,
                       eval_dataloader=None, **kwargs):
        if self.searcher is not None:
            if self.searcher.model is model and self.result is None:
                return                  # this search, trained again
            if self.searcher.model is model:
                raise GrafsError("GrafsTrainerCallback already searched this model (its "
                                 "activations are the found cell now); to train it on, train "
                                 "without the callback; for another search, a fresh model")
            self.searcher, self.result, self._phase, self._pending = None, None, -1, {}
        options = dict(self.options)
        if "activation_types" not in options:
            self.act_key, cls = _config_activation(model)
            options["activation_types"] = (cls,)
        else:
            self.act_key = _config_activation(model, required=False)[0] or ACT_KEYS[0]
        options.setdefault("loss_scaling", bool(getattr(args, "fp16", False)))
        device = next(model.parameters()).device
        self.searcher = Searcher(model, epochs=self.search_epochs, device=device, **options)
        _declare_shared_cell(model)
        self._loader = self._arch_loader(args, train_dataloader, eval_dataloader)
        # the phases span the steps this train() runs (a resumed one starts the search anew)
        self._first_step = int(state.global_step)
        self._max_steps = max(1, int(state.max_steps) - self._first_step)
        self._device = device

    def _arch_loader(self, args, train_dataloader, eval_dataloader):
        data = self.arch_data if self.arch_data is not None else eval_dataloader
        if data is None:
            raise GrafsError("GrafsTrainerCallback takes its arch steps' batches from the eval "
                             "data: call callback.attach(trainer) (the Trainer's eval dataloader), "
                             "or pass arch_data=<a DataLoader or Dataset>")
        if isinstance(data, torch.utils.data.Dataset):
            collate = getattr(train_dataloader, "collate_fn", None)
            return torch.utils.data.DataLoader(data, batch_size=args.per_device_eval_batch_size,
                                               collate_fn=collate)
        return data

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        s = self.searcher
        phase = min(self.search_epochs - 1,
                    (state.global_step - self._first_step) * self.search_epochs // self._max_steps)
        if phase != self._phase:
            self._close_phase()
            s.epoch_start(phase)
            self._phase = phase
            self._batches = cycle(self._loader)
        if state.global_step % self.arch_every == 0:
            batch = _to(next(self._batches), self._device)
            s.arch_step(lambda: self._loss(model, batch))
        s.weight_step_begin()

    def _loss(self, model, batch):
        if self.arch_loss is not None:
            return self.arch_loss(model, batch)
        out = model(**batch) if isinstance(batch, Mapping) else model(*batch)
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:
            raise GrafsError("the model returned no loss for the arch step's batch: give the eval "
                             "batches labels, or pass arch_loss=lambda model, batch: <the loss>")
        return loss

    def on_substep_end(self, args, state, control, **kwargs):
        self.searcher.weight_step_begin()     # fresh samples for the next micro-batch

    def on_step_end(self, args, state, control, **kwargs):
        self.searcher.weight_step_end()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self._pending["val_loss"] = float(metrics["eval_loss"])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._pending["train_loss"] = float(logs["loss"])

    def _close_phase(self) -> None:
        if self._phase >= 0:
            self.searcher.epoch_end(self._pending.get("val_loss"),
                                    train_loss=self._pending.get("train_loss"))
            self._pending = {}

    def on_train_end(self, args, state, control, **kwargs):
        if self.searcher is None or self.result is not None:
            return
        self.searcher.weight_step_end()
        self._close_phase()
        settings = {**self.searcher.settings, "integration": "hf_trainer", "name": self.name,
                    "act_key": self.act_key, "arch_every": self.arch_every,
                    "max_steps": self._max_steps,
                    "gradient_accumulation_steps": args.gradient_accumulation_steps}
        self.result = self.searcher.result(settings)
        s = self.searcher
        if not s.cell.is_discrete():
            # (fewer steps than search phases, or a fit stopped early)
            msg = (f"the training ended before the cell was discrete (phase {s.epoch + 1} of the "
                   f"search's {s.epochs}, {s.cell.num_active()} ops left): "
                   f"{self.result.formula} is the leading formula of an unfinished search "
                   f"(give the Trainer at least as many steps as search_epochs, and let it run "
                   f"to the end)")
            self.result.history.setdefault("warnings", []).append(msg)
            warn(msg)
        register(self.name, self.result.formula, backend=self.backend)


def _declare_shared_cell(model) -> None:
    """Declare every site's copy of the shared cell but the first one's as tied weights, so
    that transformers' safetensors checkpoints (the Trainer's ``save_steps``,
    ``trainer.save_model()``) keep one copy instead of refusing the shared tensors."""
    from grafs.searching.sites import SearchSite
    sites = [(n, m) for n, m in model.named_modules() if isinstance(m, SearchSite)]
    if len(sites) < 2:
        return
    first = sites[0][0]
    names = [f"cell.{k}" for k in sites[0][1].cell.state_dict()]
    for _, site in sites[1:]:
        site._tied_weights_keys = {k: f"{first}.{k}" for k in names}


def _config_activation(model, required: bool = True):
    """(config attribute, the activation class it builds) for a transformers model."""
    config = getattr(model, "config", None)
    for key in ACT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, str):
            from transformers.activations import ACT2FN
            return key, type(ACT2FN[value])
    if required:
        raise GrafsError(f"{type(model).__name__}'s config names no activation ({', '.join(ACT_KEYS)}); "
                         f"pass activation_types=(<the activation module class>,)")
    return None, None


def _to(batch, device):
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(v.to(device) if isinstance(v, torch.Tensor) else v for v in batch)
    return batch.to(device)
