"""The state of one GRAFS search, apart from the data and the loop that drives it.

A :class:`Searcher` swaps the model's activations for one shared relaxed cell, owns α and γ,
their optimizer, the shrink schedule and the per-epoch history, and turns the cell into the
found formula at the end. :func:`grafs.searching.search` is a loop over it (loop.py).
"""
from __future__ import annotations

import json
import warnings
from typing import Sequence

import torch
from torch import nn

from grafs.errors import GrafsWarning
from grafs.runtime.discretize import centred, found_formula
from grafs.runtime.entropy import hole_entropies
from grafs.runtime.schedule import shrink_schedule
from grafs.searching.result import SearchResult, json_default
from grafs.searching.sites import DEFAULT_TYPES, SearchSite, replace_activations
from grafs.searching.step import arch_optimizer

#: normalised entropy of the Dirichlet mean above which a hole's α has not told its ops apart;
#: measured on the teacher task (docs/results-teacher.md): a search whose ops were dropped at
#: random had 0.998–0.999 at its first drop, searches that recovered the teacher 0.97–0.98
UNLEARNED_ENTROPY = 0.995

HISTORY_KEYS = ("epochs", "train_loss", "val_loss", "train_acc", "val_acc", "num_active", "alpha",
                "gamma", "formula", "dropped", "seconds", "entropy")


class Searcher:
    """One search's relaxed cell in ``model`` (changed in place), its arch optimizer, shrink
    schedule and history. ``start`` is the first shrink epoch (the paper: 2·E0)."""

    def __init__(self, model: nn.Module, space, *, epochs: int, warmstart_epochs: int, start: int,
                 seed: int, arch_lr: float, arch_betas: Sequence[float], arch_weight_decay: float,
                 cell_mode: str = "auto", device: torch.device | None = None,
                 activation_types: Sequence[type] = DEFAULT_TYPES):
        self.model, self.space = model, space
        self.epochs, self.warmstart_epochs = epochs, warmstart_epochs
        self.cell = space.relax(mode=cell_mode, seed=seed).to(device)
        # read by every SearchSite: the cell, or the original activation (warm start)
        self.state = {"use_cell": True}
        self.n_sites = replace_activations(model, lambda orig: SearchSite(orig, self.cell, self.state),
                                           activation_types)
        self.arch_params = list(self.cell.arch_parameters())
        arch_ids = {id(p) for p in self.arch_params}
        self.weights = [p for p in model.parameters() if id(p) not in arch_ids]
        self.arch_opt = arch_optimizer(self.arch_params, arch_lr, arch_betas, arch_weight_decay)
        self.schedule = shrink_schedule(space.num_ops, len(space.holes), epochs, start) if epochs > 1 else {}
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}

    def is_warm(self, epoch: int) -> bool:
        """Whether ``epoch`` trains the weights with the original activation (warm start)."""
        return epoch < self.warmstart_epochs

    def start_epoch(self, epoch: int) -> None:
        """Progressive shrinking: drop the ops the schedule asks for at this epoch's start."""
        if epoch not in self.schedule:
            return
        if epoch == min(self.schedule):
            warn_if_unlearned(self.cell, epoch, self.history)
        for hole, op in self.cell.drop(self.schedule[epoch]):
            self.history["dropped"].append([epoch, hole, op])

    def end_epoch(self, epoch: int, train: dict, val_loss: float, val_acc: float | None,
                  seconds: float) -> str:
        """Append the epoch to the history; returns the leading formula."""
        cell, h = self.cell, self.history
        formula = str(cell.discretize())
        h["epochs"].append(epoch)
        h["train_loss"].append(train["loss"] / max(train["n"], 1))
        h["train_acc"].append(train["acc"] / train["nacc"] if train["nacc"] else None)
        h["val_loss"].append(val_loss)
        h["val_acc"].append(val_acc)
        h["num_active"].append(cell.num_active())
        h["alpha"].append([a.detach().cpu().tolist() for a in cell.alpha])
        h["gamma"].append(cell.gamma.detach().cpu().tolist())
        h["formula"].append(formula)
        h["seconds"].append(seconds)
        h.setdefault("entropy", []).append(hole_entropies(cell))  # old checkpoints lack it
        return formula

    def state_dict(self) -> dict:
        """What a checkpoint needs besides the model (whose state holds the cell's α and γ)."""
        return {"a_opt": self.arch_opt.state_dict(), "history": json.dumps(self.history, default=json_default)}

    def load_state_dict(self, state: dict) -> None:
        self.arch_opt.load_state_dict(state["a_opt"])
        self.history = json.loads(state["history"])

    def result(self, settings: dict, seconds: float) -> SearchResult:
        """The found formula (discretized, minus its value at 0) with the history."""
        cell, history = self.cell, self.history
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
        warnings.warn(msg, GrafsWarning, stacklevel=4)
