"""transformers: registered formulas in ``transformers.activations.ACT2FN`` (and ``ACT2CLS``).

Models look activations up as ``ACT2FN[config.hidden_act]``, which instantiates the stored
class; a few models call ``ACT2CLS[name]()``, and config validation checks ``name in ACT2FN``.
Both dicts are shared by every model module, so entries added here are seen everywhere.
grafs never imports transformers: :mod:`grafs.integrations.registry` calls these functions on
the already imported module. Install with ``pip install grafs[hf]``.
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable

LIBRARY = "transformers"
MODULE = "transformers.activations"


def key(name: str) -> str:
    return name


def _dicts(mod: ModuleType) -> list[dict]:
    return [d for d in (getattr(mod, "ACT2FN", None), getattr(mod, "ACT2CLS", None)) if d is not None]


def owner(mod: ModuleType, k: str, is_ours: Callable[[object], bool]) -> str | None:
    """None if ``k`` is free, the grafs name if grafs put it there, "" if transformers did."""
    for d in _dicts(mod):
        if k in d:
            # dict.get: ACT2FN's own __getitem__ would instantiate the activation
            v = dict.get(d, k)
            return v.grafs_name if is_ours(v) else ""
    return None


def add(mod: ModuleType, k: str, cls: type) -> None:
    for d in _dicts(mod):
        d[k] = cls


def remove(mod: ModuleType, k: str, cls: type) -> None:
    for d in _dicts(mod):
        if dict.get(d, k) is cls:
            del d[k]
