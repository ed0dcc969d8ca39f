"""The result of a search (formula, history, cell state) and how it is saved atomically."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grafs.errors import GrafsError


@dataclass
class SearchResult:
    """What a search found, and how.

    ``formula``: the discretized activation, exact (parses with grafs.parse into the same
    function; if the highest-α ops give a formula without x, the closest one with x and a
    GrafsWarning, see grafs.runtime.discretize), minus its value at 0 when that is not 0
    (``history["uncentred_formula"]`` keeps the cell's own; grafs.runtime.discretize.centred); ``display``: it rounded; ``history``: per epoch the
    α of every hole, γ, losses, accuracies, active-op counts, the leading formula and per hole
    the normalised entropy of the Dirichlet mean (grafs.runtime.entropy.normalized_entropy), plus the
    dropped ops with their epochs; ``settings``: the arguments of the run.
    """
    formula: str
    history: dict
    settings: dict = field(default_factory=dict)
    search_seconds: float = 0.0
    cell_state: dict | None = None

    @property
    def expr(self):
        from grafs.grammar.parser import parse
        return parse(self.formula)

    @property
    def display(self) -> str:
        """The formula for people: constants folded, simplified, numbers rounded to 4
        significant digits (it parses, but only ``formula`` is exactly what was found)."""
        from grafs.grammar.display import display
        return display(self.formula)

    @property
    def activation(self) -> nn.Module:
        """The found activation compiled (inductor backend)."""
        from grafs.compiler import compile as gcompile
        return gcompile(self.formula)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/result.json`` and ``path/cell.pt`` (atomically, file by file)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        meta = {"formula": self.formula, "history": self.history, "settings": self.settings,
                "search_seconds": self.search_seconds, "grafs_result_version": 1}
        atomic_write_text(p / "result.json", json.dumps(meta, indent=1, default=json_default))
        if self.cell_state is not None:
            atomic_torch_save(self.cell_state, p / "cell.pt")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SearchResult":
        p = Path(path)
        f = p / "result.json" if p.is_dir() else p
        try:
            meta = json.loads(f.read_text())
            formula = meta["formula"]
        except (OSError, ValueError, KeyError) as err:
            raise GrafsError(f"{f} is not a grafs search result: {err}") from None
        from grafs.grammar.parser import parse
        parse(formula)  # a corrupt formula is an error now, not at first use
        cell = p / "cell.pt" if p.is_dir() else None
        state = torch.load(cell, weights_only=True) if cell is not None and cell.exists() else None
        return cls(formula, meta.get("history", {}), meta.get("settings", {}),
                   meta.get("search_seconds", 0.0), state)

    def __repr__(self) -> str:
        return f"SearchResult(formula={self.formula!r}, epochs={len(self.history.get('epochs', []))})"


def json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
