"""Run a callback right after a given module has been imported (a post-import hook).

grafs adds its registered activations to other libraries' registries (a dict in a module such
as ``transformers.activations``). If that module is already imported, the names go in at once;
otherwise this meta-path finder notices the module's import, lets the normal finder and loader
do their work, and calls the callback with the freshly executed module. Nothing is imported
early, and a package that is never imported costs nothing.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
import threading
from types import ModuleType
from typing import Callable

_CALLBACKS: dict[str, list[Callable[[ModuleType], None]]] = {}
_LOCK = threading.Lock()


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` each time module ``name`` is (re)imported from now on.

    It is not called for an import that already happened: the caller checks ``sys.modules``.
    """
    with _LOCK:
        _CALLBACKS.setdefault(name, []).append(callback)
        if not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _CALLBACKS:
            return None
        # ask the finders after this one, as the import system would have done
        later = sys.meta_path[sys.meta_path.index(self) + 1:] if self in sys.meta_path else sys.meta_path
        for finder in later:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, _CALLBACKS[fullname])
                return spec
        return None


class _Loader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the callbacks on the executed module."""

    def __init__(self, loader, callbacks):
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # the module keeps the real loader (inspect, importlib.resources and reload use it)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        for cb in list(self._callbacks):
            try:
                cb(module)
            except Exception as err:      # a hook must never break the library's import
                warnings.warn(f"grafs: a hook on importing {module.__name__} failed: "
                              f"{type(err).__name__}: {err}", stacklevel=2)
