"""The GRAFS search as an object a training loop drives (seeds/001 Algorithm 1).

A :class:`Searcher` swaps the model's activations for one shared relaxed cell, owns α and γ,
their optimizer, the Dirichlet draws, the shrink schedule and the per-epoch history, and turns
the cell into the found formula at the end. Your loop calls, in this order::

    searcher = grafs.Searcher(model, epochs=E)
    opt = torch.optim.AdamW(searcher.weight_parameters())   # (model.parameters() works too)
    for epoch in range(E):
        searcher.epoch_start(epoch)                 # drops ops on the schedule; warm start
        for xb, yb in train_loader:
            xv, yv = next(val_batches)
            searcher.arch_step(lambda: loss_fn(model(xv), yv))   # α/γ step, weights frozen
            with searcher.weight_step():            # α/γ frozen: they get no gradient
                loss_fn(model(xb), yb).backward()
            opt.step(); opt.zero_grad()
        searcher.epoch_end(val_loss=...)
    result = searcher.result()                      # a grafs.SearchResult

:func:`grafs.searching.loop.search` is such a loop (through :class:`grafs.searching.step.Stepper`,
whose arch and weight steps are these calls); the Lightning and Hugging Face callbacks in
:mod:`grafs.integrations` are others.
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Callable, Sequence

import torch
from torch import nn

from grafs.errors import GrafsError, warn
from grafs.runtime.discretize import centred, found_formula
from grafs.runtime.entropy import hole_entropies
from grafs.runtime.schedule import shrink_schedule
from grafs.searching.config import AUTO_ARCH_LR, AUTO_ARCH_WEIGHT_DECAY, arch_optimizer
from grafs.searching.data import resolve_device
from grafs.searching.result import SearchResult, json_default
from grafs.searching.sites import DEFAULT_TYPES, SearchSite, replace_activations

#: normalised entropy of the Dirichlet mean above which a hole's α has not told its ops apart;
#: measured on the teacher task (docs/results-teacher.md): a search whose ops were dropped at
#: random had 0.998–0.999 at its first drop, searches that recovered the teacher 0.97–0.98
UNLEARNED_ENTROPY = 0.995

#: the arch optimizer's settings the ablations support for any model, with op-output
#: normalisation (``SearchSpace.grafs(normalize=True)``): grafs.search's preset "auto"
#: (grafs.searching.config); the paper's are 1e-3 and 1e-3
STUDIED_ARCH_LR = AUTO_ARCH_LR
STUDIED_ARCH_WEIGHT_DECAY = AUTO_ARCH_WEIGHT_DECAY

HISTORY_KEYS = ("epochs", "train_loss", "val_loss", "train_acc", "val_acc", "num_active", "alpha",
                "gamma", "formula", "dropped", "seconds", "entropy")

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def optimizer_step(scaler, opt, params, dist=None, also=()) -> None:
    """One optimizer step on gradients averaged over the ranks (data-parallel search), then
    the gradients set to None; ``also``: further optimizers whose gradients came from the same
    scaled loss (the single-level step's arch optimizer) and step with it."""
    groups = [list(params)] + [[p for g in o.param_groups for p in g["params"]] for o in also]
    if dist is not None:
        for ps in groups:
            dist.average_grads(ps)
    scaler.step(opt)
    for o, ps in zip(also, groups[1:]):
        # (a discrete cell without γ ops has no arch gradients left)
        if any(p.grad is not None for p in ps):
            scaler.step(o)
    scaler.update()
    for o in (opt, *also):
        o.zero_grad(set_to_none=True)


def check_epochs(epochs: int, warmstart_epochs: int) -> None:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise GrafsError(f"epochs must be an int >= 1, got {epochs!r}")
    if not isinstance(warmstart_epochs, int) or isinstance(warmstart_epochs, bool):
        raise GrafsError(f"warmstart_epochs must be an int, got {warmstart_epochs!r}")
    if not 0 <= warmstart_epochs < epochs:
        raise GrafsError(f"warmstart_epochs must be in [0, epochs), got {warmstart_epochs} with epochs={epochs}")


def default_shrink_start(epochs: int, warmstart_epochs: int) -> int:
    """The first shrink epoch: 2·E0 (the paper), or earlier if the run is too short for that."""
    return max(1, min(2 * warmstart_epochs, epochs - 1))


class SearchSteps:
    """The method's two steps on a model whose activation sites (:class:`SearchSite`) share
    ``cell``: the arch step on a validation batch and the frame of a weight step. ``state`` is
    the sites' shared ``{"use_cell": bool}``. :class:`Searcher` is one (it builds the cell and
    the sites itself); :class:`grafs.searching.step.Stepper` drives one."""

    def __init__(self, model: nn.Module, cell, state: dict, arch_opt: torch.optim.Optimizer, *,
                 weights: Sequence[nn.Parameter] | None = None,
                 arch_params: Sequence[nn.Parameter] | None = None, n_sites: int | None = None,
                 amp: str | None = None, loss_scaling: bool | None = None,
                 device: torch.device | None = None, dist=None):
        if amp not in AMP_DTYPES:
            raise GrafsError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        self.model, self.cell, self.state = model, cell, state
        self.arch_params = list(arch_params if arch_params is not None else cell.arch_parameters())
        arch_ids = {id(p) for p in self.arch_params}
        self.weights = list(weights) if weights is not None else \
            [p for p in model.parameters() if id(p) not in arch_ids]
        self.arch_opt = arch_opt
        # the cell draws one batch of samples per pass, one per site (see refresh_samples)
        self.n_sites = n_sites if n_sites and hasattr(cell, "refresh_samples") else None
        self.dev = device if device is not None else self.arch_params[0].device
        self.amp_name, self.amp = amp, AMP_DTYPES[amp]
        # fp16 needs loss scaling (the arch step's own scaler; its steps are independent)
        scaled = amp == "fp16" if loss_scaling is None else bool(loss_scaling)
        self.arch_scaler = torch.amp.GradScaler(self.dev.type, enabled=scaled)
        self.dist = dist      # grafs.searching.distributed.Dist: α/γ gradients averaged over the ranks
        self.warm = False     # the current epoch trains the weights with the original activation
        self.last_arch_loss: torch.Tensor | None = None
        self._frozen: list | None = None     # α/γ frozen by an open weight step

    def weight_parameters(self) -> list[nn.Parameter]:
        """The model's parameters without α and γ: what your weight optimizer trains."""
        return list(self.weights)

    def arch_parameters(self) -> list[nn.Parameter]:
        """α of every hole and all γ: what the arch optimizer trains."""
        return list(self.arch_params)

    def autocast(self):
        """The ``amp`` autocast context (a no-op without ``amp``)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dev.type, dtype=self.amp)

    def arch_step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One arch step: ``closure()`` computes the loss of the model on a validation batch
        (under the ``amp`` autocast) with fresh Dirichlet samples at every site and the
        network's weights frozen (backward computes no weight gradient, so none leaks into the
        weight step and gradients your loop accumulates are kept); then an Adam step on α and γ
        (averaged over the ranks when distributed) and their gradients set to None. Returns
        the loss, detached."""
        if self._frozen is not None:
            raise GrafsError("arch_step() inside a weight step: call it before `with "
                             "searcher.weight_step():` (or after weight_step_end())")
        self.state["use_cell"] = True
        self.arch_opt.zero_grad(set_to_none=True)
        if self.n_sites:
            self.cell.refresh_samples(self.n_sites)
        # the network's weights are frozen for the arch step: backward then computes no weight
        # gradients at all (the reference computes and discards them), and none can leak into
        # the weight update (the reference forgets to zero them in two of its three copies)
        frozen = [p for p in self.weights if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with self.autocast():
                loss = closure()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise GrafsError(f"the arch_step closure must return the loss as a one-element "
                                 f"tensor, got {type(loss).__name__}"
                                 + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
            # a discrete cell without γ ops has nothing left to learn (its samples are constant)
            learns = loss.requires_grad
            if not learns and not self.cell.is_discrete():
                raise GrafsError("the arch_step closure's loss has no autograd graph (computed "
                                 "under torch.no_grad() or inference_mode, or detached): α and "
                                 "γ would not learn; compute the loss with gradients enabled")
            if learns:
                self.arch_scaler.scale(loss.reshape(())).backward()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        if learns:
            optimizer_step(self.arch_scaler, self.arch_opt, self.arch_params, self.dist)
        self.last_arch_loss = loss.detach()
        return self.last_arch_loss

    @contextlib.contextmanager
    def weight_step(self, *, use_cell: bool | None = None, train_arch: bool = False):
        """Around your training batch's forward and backward (not the optimizer step): α and γ
        are frozen, so they get no gradient (an optimizer built over ``model.parameters()``
        skips them: their grad is None); the sites use the cell with fresh samples, or the
        original activation while warm-starting (``use_cell`` overrides). ``train_arch``: the
        single-level variant, α/γ get gradients from the same pass."""
        if self._frozen is not None:
            raise GrafsError("weight_step() inside another weight step: the inner one's end "
                             "would unfreeze α and γ inside the outer one; use one per "
                             "training batch")
        self.weight_step_begin(use_cell=use_cell, train_arch=train_arch)
        try:
            yield self
        finally:
            self.weight_step_end()

    def weight_step_begin(self, *, use_cell: bool | None = None, train_arch: bool = False) -> None:
        """:meth:`weight_step` as a pair of calls (for loops with hooks before and after the
        training batch); close it with :meth:`weight_step_end`."""
        if self._frozen is not None:
            self.weight_step_end()
        use_cell = not self.warm if use_cell is None else use_cell
        self.state["use_cell"] = use_cell
        # bilevel: α and γ are frozen, so backward does not differentiate through the
        # Dirichlet sample for nothing
        self._frozen = [] if train_arch else [p for p in self.arch_params if p.requires_grad]
        for p in self._frozen:
            p.requires_grad_(False)
        if self.n_sites:
            self.cell.clear_samples()
            if use_cell:
                self.cell.refresh_samples(self.n_sites)

    def weight_step_end(self) -> None:
        for p in self._frozen or ():
            p.requires_grad_(True)
        self._frozen = None
        if self.n_sites:
            self.cell.clear_samples()
        self.state["use_cell"] = True     # evaluation sees the cell, warm start or not


class Searcher(SearchSteps):
    """One GRAFS search inside your own training loop (see the module docstring for the calls
    in order, and docs/guide/own-loop.md).

    ``model`` is changed in place: its activation modules (``activation_types`` and every
    :class:`grafs.Act`) become sites of one shared relaxed cell of ``space`` (default: the
    paper's cell with op-output normalisation, the setting studied with ``arch_lr=3e-2`` and
    ``arch_weight_decay=0``, as grafs.search's defaults).
    ``epochs``: how many times your loop will call :meth:`epoch_start`/:meth:`epoch_end`; the
    shrink schedule drops ops at epoch starts from ``shrink_start`` (default 2·E0) so the cell
    is discrete in the last epoch; for the first ``warmstart_epochs`` epochs the weight steps
    use the original activation. ``arch_lr``, ``arch_betas``, ``arch_weight_decay``: the arch
    optimizer (Adam). ``amp``: None, "bf16" or "fp16": the arch step's forward runs under
    autocast ("fp16" also scales its loss; ``loss_scaling`` overrides, e.g. when your own
    autocast wraps the closure). ``device``: the cell's (default: the model's).
    ``distributed``: with an initialised process group of several processes (None: use it if
    there is one; False: never), α/γ gradients are averaged over the ranks, so every rank holds
    the same α, drops and formula (average the weights' gradients as you do now, e.g. DDP).
    ``seed`` seeds the cell's α and γ initialisation; the Dirichlet draws come from torch's
    global RNG, as your loop's. Give α enough arch steps before the first drop (the budget
    rule of docs/guide/search.md: >= 100 after the warm start, >= 500 in all); a GrafsWarning
    says when the first drop comes while α is still about uniform.
    """

    def __init__(self, model: nn.Module, *, epochs: int, space=None, seed: int = 0,
                 warmstart_epochs: int = 1, shrink_start: int | None = None,
                 arch_lr: float = STUDIED_ARCH_LR, arch_betas: Sequence[float] = (0.5, 0.999),
                 arch_weight_decay: float = STUDIED_ARCH_WEIGHT_DECAY, amp: str | None = None,
                 loss_scaling: bool | None = None, cell_mode: str = "auto",
                 device: torch.device | str | None = None,
                 activation_types: Sequence[type] = DEFAULT_TYPES, distributed=None):
        from grafs.runtime.space import SearchSpace
        check_epochs(epochs, warmstart_epochs)
        space = space if space is not None else SearchSpace.grafs(normalize=True)
        dev = resolve_device(device) if device is not None else next(
            (p.device for p in model.parameters()), torch.device("cpu"))
        dist = _dist_context(distributed, dev, device is not None)
        self.space, self.epochs, self.warmstart_epochs = space, epochs, warmstart_epochs
        self.shrink_start = start = shrink_start if shrink_start is not None else \
            default_shrink_start(epochs, warmstart_epochs)
        cell = space.relax(mode=cell_mode, seed=seed).to(dev)
        cell.prebuild(dev)      # the C cell's first build (about a second) while the rest is set up
        # read by every SearchSite: the cell, or the original activation (warm start)
        state = {"use_cell": True}
        n_sites = replace_activations(model, lambda orig: SearchSite(orig, cell, state),
                                      activation_types)
        params = list(cell.arch_parameters())
        super().__init__(model, cell, state, arch_optimizer(params, arch_lr, arch_betas, arch_weight_decay),
                         arch_params=params, n_sites=n_sites, amp=amp, loss_scaling=loss_scaling,
                         device=dev, dist=dist)
        if dist is not None:      # one α and γ on every rank, whatever each was seeded with
            dist.broadcast_(params)
        self.schedule = shrink_schedule(space.num_ops, len(space.holes), epochs, start) if epochs > 1 else {}
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        self.settings = dict(epochs=epochs, warmstart_epochs=warmstart_epochs, shrink_start=start,
                             seed=seed, arch_lr=arch_lr, arch_weight_decay=arch_weight_decay,
                             arch_betas=list(arch_betas), template=space.template,
                             num_ops=space.num_ops, cell_mode=cell_mode, amp=amp,
                             activation_sites=n_sites,
                             **({"normalize": True} if getattr(space, "normalize", False) else {}),
                             **({"world_size": dist.world_size} if dist is not None else {}))
        self.epoch = -1             # the epoch started last (-1: none yet)
        self.next_epoch = 0         # the epoch epoch_start() starts when not told
        self._t_epoch = self._t_start = time.perf_counter()

    # -- epochs --------------------------------------------------------------------------
    def is_warm(self, epoch: int) -> bool:
        """Whether ``epoch`` trains the weights with the original activation (warm start)."""
        return epoch < self.warmstart_epochs

    def epoch_start(self, epoch: int | None = None) -> list[tuple[str, str]]:
        """Start ``epoch`` (default: the one after the last): progressive shrinking drops the
        ops the schedule asks for at this epoch's start, and the weight steps of a warm-start
        epoch use the original activation. Returns the (hole, op) pairs dropped."""
        epoch = self.next_epoch if epoch is None else int(epoch)
        if not 0 <= epoch < self.epochs:
            raise GrafsError(f"epoch {epoch} is outside the search's {self.epochs} epochs "
                             f"(0 to {self.epochs - 1}); pass epochs= to Searcher as your loop runs them")
        if epoch < self.epoch:
            warn(f"epoch_start({epoch}) after epoch_start({self.epoch}): the dropped ops stay "
                 f"dropped (a search's epochs go forward)")
        self.epoch, self.next_epoch = epoch, epoch + 1
        self.warm = self.is_warm(epoch)
        self._t_epoch = time.perf_counter()
        # drop down to the active count the schedule reaches by this epoch: calling it twice
        # (a reloaded mid-epoch state) drops nothing more, and skipped epochs catch up
        target = self.space.num_ops - sum(k for e, k in self.schedule.items() if e <= epoch)
        k = self.cell.num_active() - target
        dropped = []
        if k > 0:
            if not self.history["dropped"]:
                warn_if_unlearned(self.cell, epoch, self.history)
            for hole, op in self.cell.drop(k):
                self.history["dropped"].append([epoch, hole, op])
                dropped.append((hole, op))
        return dropped

    def epoch_end(self, val_loss: float | torch.Tensor | None = None, *,
                  train_loss: float | torch.Tensor | None = None, val_acc: float | None = None,
                  train_acc: float | None = None) -> str:
        """Record the epoch started last in the history (the losses your loop measured, if
        any: they are reported, the search does not use them); returns the leading formula."""
        if self.epoch < 0:
            raise GrafsError("epoch_end() before any epoch_start()")
        cell, h = self.cell, self.history
        formula = str(cell.discretize())
        h["epochs"].append(self.epoch)
        h["train_loss"].append(_number(train_loss))
        h["train_acc"].append(_number(train_acc))
        h["val_loss"].append(_number(val_loss))
        h["val_acc"].append(_number(val_acc))
        h["num_active"].append(cell.num_active())
        h["alpha"].append([a.detach().cpu().tolist() for a in cell.alpha])
        h["gamma"].append(cell.gamma.detach().cpu().tolist())
        h["formula"].append(formula)
        h["seconds"].append(time.perf_counter() - self._t_epoch)
        h.setdefault("entropy", []).append(hole_entropies(cell))  # old checkpoints lack it
        return formula

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The search's own state: α, γ and the dropped ops (``cell``; also in the model's
        state_dict), the arch optimizer, its loss scaler, the history and the next epoch. Your
        loop's checkpoint needs it beside the model's and optimizer's (and the RNG state for a
        resume that draws exactly what the uninterrupted run would)."""
        return {"a_opt": self.arch_opt.state_dict(),
                "history": json.dumps(self.history, default=json_default),
                "cell": self.cell.state_dict(), "arch_scaler": self.arch_scaler.state_dict(),
                "next_epoch": self.next_epoch, "search": self._identity()}

    def _identity(self) -> dict:
        """What a saved state must match to be loaded: the space and the shrink schedule."""
        return {"template": self.space.template, "ops": [list(h.ops) for h in self.space.holes],
                "epochs": self.epochs, "warmstart_epochs": self.warmstart_epochs,
                "shrink_start": self.shrink_start}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("search")     # (states saved before it was recorded load unchecked)
        if saved is not None and saved != self._identity():
            mine = self._identity()
            diff = ", ".join(f"{k} {saved.get(k)!r} there, {mine[k]!r} here" for k in mine
                             if saved.get(k) != mine[k])
            raise GrafsError(f"this search state was saved by another search ({diff}); load it "
                             f"into a Searcher with the same space and schedule")
        if "cell" in state:
            try:
                self.cell.load_state_dict(state["cell"])
            except RuntimeError as err:
                raise GrafsError(f"this search state does not fit the cell ({str(err).splitlines()[0]}); "
                                 f"load it into a Searcher with the same space") from None
        self.arch_opt.load_state_dict(state["a_opt"])
        if state.get("arch_scaler"):
            self.arch_scaler.load_state_dict(state["arch_scaler"])
        self.history = json.loads(state["history"])
        ended = self.history.get("epochs") or []
        self.next_epoch = int(state.get("next_epoch", ended[-1] + 1 if ended else 0))
        self.epoch = self.next_epoch - 1

    def result(self, settings: dict | None = None, seconds: float | None = None) -> SearchResult:
        """The found formula (discretized, minus its value at 0) with the history."""
        cell, history = self.cell, self.history
        settings = dict(self.settings) if settings is None else settings
        seconds = time.perf_counter() - self._t_start if seconds is None else seconds
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
        return SearchResult(str(found), history, settings, seconds,
                            {k: v.detach().cpu() for k, v in cell.state_dict().items()})


def _number(v):
    """A history value: a float (from a tensor too) or None."""
    if v is None:
        return None
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _dist_context(distributed, dev: torch.device, explicit_device: bool):
    """A :class:`grafs.searching.distributed.Dist` given as is, else the context ``distributed``
    (None, True or False) selects."""
    from grafs.searching import distributed as gdist
    if distributed is None or isinstance(distributed, bool):
        return gdist.context(distributed, dev, explicit_device)
    return distributed


def warn_if_unlearned(cell, epoch: int, history: dict) -> None:
    """Warn (and note in ``history``) when the first ops are about to be dropped while α is
    still about uniform."""
    ent = hole_entropies(cell)
    if ent and min(ent) > UNLEARNED_ENTROPY:
        msg = (f"the search drops its first ops at epoch {epoch} while α is still about uniform "
               f"(normalised entropy of every hole's Dirichlet mean > {UNLEARNED_ENTROPY}: "
               f"min {min(ent):.4f}), so these drops are close to random; give α more arch steps "
               f"before shrinking (more epochs or steps per epoch, a later shrink_start) or a "
               f"larger arch_lr")
        history.setdefault("warnings", []).append(msg)
        warn(msg)
