"""timm: registered formulas in ``timm.layers.create_act._ACT_LAYER_DEFAULT``.

``get_act_layer(name)`` lower-cases ``name`` and returns ``_ACT_LAYER_DEFAULT[name]`` (after
``_ACT_LAYER_ME`` for a few built-in names), which models call as ``act_layer(inplace=True)``
and ``create_act_layer`` as ``act_layer(**kwargs)``; so the class goes in under the
lower-cased name and accepts ``inplace``. timm ≥ 0.9 (the ``timm.layers`` package). grafs
never imports timm: :mod:`grafs.integrations.registry` calls these functions on the already
imported module. Install with ``pip install grafs[timm]``.
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable

LIBRARY = "timm"
MODULE = "timm.layers.create_act"


def key(name: str) -> str:
    return name.lower()


def owner(mod: ModuleType, k: str, is_ours: Callable[[object], bool]) -> str | None:
    """None if ``k`` is free, the grafs name if grafs put it there, "" if timm did."""
    for d in (getattr(mod, "_ACT_LAYER_ME", {}), mod._ACT_LAYER_DEFAULT):
        if k in d:
            return d[k].grafs_name if is_ours(d[k]) else ""
    return None


def add(mod: ModuleType, k: str, cls: type) -> None:
    mod._ACT_LAYER_DEFAULT[k] = cls


def remove(mod: ModuleType, k: str, cls: type) -> None:
    if mod._ACT_LAYER_DEFAULT.get(k) is cls:
        del mod._ACT_LAYER_DEFAULT[k]
