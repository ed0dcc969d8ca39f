"""The result of a search (formula, history, cell state) and how it is saved atomically."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.files import (atomic_write_bytes, atomic_write_text, read_error, read_json, torch_load,
                         write_error)

#: result.json's layout; a result of a later layout is refused with a clear error
RESULT_VERSION = 1
_AGAIN = "load another copy, or run the search again (or resume it from its checkpoint) and save it"


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
    def verdict(self):
        """The found formula against the model's original activation, both trained from
        scratch with the search's recipe (:class:`grafs.searching.verdict.Verdict`; ``print``
        it), or None when the search measured none (``verdict_seeds=0``, built-in tasks)."""
        from grafs.searching.verdict import Verdict
        v = self.history.get("verdict")
        return Verdict.from_dict(v) if v else None

    @property
    def activation(self) -> nn.Module:
        """The found activation compiled (inductor backend)."""
        from grafs.compiler import compile as gcompile
        return gcompile(self.formula)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/result.json`` and the cell state it names (``cell-<hash>.pt``), each
        atomically: the cell file first, then result.json, then the cell files no result.json
        names any more. A reader sees the old result or the new one, whole, even when the
        process is killed in between; a failed save (disk full, a read-only directory) leaves
        the old result as it was and raises a GrafsError."""
        p = Path(path)
        kept = "a result saved there before is unchanged"
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(p, "the search result directory", err, kept) from None
        cell = None
        if self.cell_state is not None:
            buf = io.BytesIO()
            torch.save(self.cell_state, buf)
            data = buf.getvalue()
            cell = f"cell-{hashlib.sha256(data).hexdigest()[:16]}.pt"
            atomic_write_bytes(p / cell, data, "the search result's cell state", kept)
        meta = {"formula": self.formula, "history": self.history, "settings": self.settings,
                "search_seconds": self.search_seconds, "grafs_result_version": RESULT_VERSION,
                "cell": cell}
        atomic_write_text(p / "result.json", json.dumps(meta, indent=1, default=json_default),
                          "the search result", kept)
        for old in p.glob("cell*.pt"):      # an earlier result's (or cell.pt, from older grafs)
            if old.name != cell and re.fullmatch(r"cell(-[0-9a-f]{16})?\.pt", old.name):
                try:
                    old.unlink()
                except OSError:
                    pass
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SearchResult":
        """The result :meth:`save` wrote to ``path`` (a directory, or its result.json); an
        unusable file is a GrafsError that names it."""
        p = Path(path)
        f = p / "result.json" if p.is_dir() else p
        meta = read_json(f, "the search result", _AGAIN, dict,
                         missing="pass a directory SearchResult.save wrote (it holds result.json)",
                         expected="a grafs search result")
        version = meta.get("grafs_result_version", 1)
        if not isinstance(version, int) or version > RESULT_VERSION:
            raise read_error(f, "the search result", f"it was written by a newer grafs (result "
                             f"format {version!r}; this grafs reads up to {RESULT_VERSION})",
                             "upgrade grafs to load it")
        wrong = [k for k, t in (("formula", str), ("history", dict), ("settings", dict),
                                ("search_seconds", (int, float)), ("cell", (str, type(None))))
                 if (k in meta or k == "formula") and not isinstance(meta.get(k), t)]
        if wrong:
            raise read_error(f, "the search result", "it is not a grafs search result ("
                             + ", ".join(f"no {k}" if k not in meta else f"{k} of the wrong type"
                                         for k in wrong) + ")", _AGAIN)
        from grafs.grammar.parser import parse
        try:
            parse(meta["formula"])  # a corrupt formula is an error now, not at first use
        except GrafsError as err:
            raise read_error(f, "the search result", f"its formula does not parse "
                             f"({str(err).splitlines()[0][:120]})", _AGAIN) from None
        # the cell state: the file result.json names (older grafs: cell.pt, if any)
        name = meta["cell"] if "cell" in meta else ("cell.pt" if (f.parent / "cell.pt").exists()
                                                    else None)
        state = None
        if name is not None:
            if Path(name).name != name or not name.endswith(".pt"):
                raise read_error(f, "the search result", f"its cell file {name!r} is not a file "
                                 f"name in its directory (corrupt)", _AGAIN)
            state = torch_load(f.parent / name, "the search result's cell state", _AGAIN)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                      for v in state.values()):
                raise read_error(f.parent / name, "the search result's cell state", "it is a torch "
                                 "file but not a cell state (a dict of tensors)", _AGAIN)
        return cls(meta["formula"], meta.get("history", {}), meta.get("settings", {}),
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
