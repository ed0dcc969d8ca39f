"""``grafs.register``: a formula as a named activation of transformers and timm.

``register("my_act", formula)`` makes a class (a :class:`grafs.Activation` subclass built
from the formula) and puts it into every supported library's activation registry — now for
the libraries already imported, and through a post-import hook (:mod:`grafs.integrations.post_import`)
for those imported later. Nothing is imported by grafs, so no library is a dependency.

Each lookup by name builds a fresh module, so learnable ``{param}``s are per layer, and they
sit in ``state_dict`` under the layer's name: ``<layer>.params.p_<param>`` (trainable families
under ``<layer>.terms.…``). The same formula always gives the same keys, so checkpoints saved
with a registered activation load into a model built with the same registration.
"""
from __future__ import annotations

import re
import sys
import threading
import warnings
from types import ModuleType
from typing import ClassVar

from grafs.compiler import BACKENDS, Activation
from grafs.compiler.lower import DEFAULT_ELL
from grafs.errors import CompileError, GrafsError
from grafs.grammar import expr as E
from grafs.integrations import post_import
from grafs.integrations import timm as _timm
from grafs.integrations import transformers as _transformers

#: the libraries' registries: modules with MODULE, add(mod, key, cls), remove(mod, key, cls),
#: owner(mod, key) and key(name)
TARGETS = (_transformers, _timm)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_REGISTERED: dict[str, type["RegisteredActivation"]] = {}
# register/unregister and the post-import hook (which runs in the thread that imports the
# library) change and read _REGISTERED and the libraries' tables together
_LOCK = threading.RLock()
_HOOKED: set[str] = set()


class RegisteredActivation(Activation):
    """Base of the classes :func:`register` makes: ``cls()`` is the compiled formula.

    ``inplace`` is accepted because timm builds activations as ``act_layer(inplace=True)``; a
    formula is computed out of place either way.
    """

    grafs_name: ClassVar[str]
    grafs_spec: ClassVar[tuple]   # (expr, backend, clip, ell)

    def __init__(self, inplace: bool = False) -> None:
        expr, backend, clip, ell = self.grafs_spec
        super().__init__(expr, backend=backend, clip=clip, ell=ell)

    def __reduce_ex__(self, protocol):
        # the class is made at run time, so pickle (torch.save(model), multiprocessing) cannot
        # find it by module and name: rebuild it from the name and formula instead
        return (_restore, (self.grafs_name, self.grafs_spec), self.__getstate__())


def _make_class(name: str, spec: tuple) -> type[RegisteredActivation]:
    camel = "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", name) if p)
    doc = f"The activation registered by grafs as {name!r}: f(x) = {spec[0]}"
    return type(camel or "Registered", (RegisteredActivation,),
                {"grafs_name": name, "grafs_spec": spec, "__doc__": doc,
                 "__module__": __name__})


def _restore(name: str, spec: tuple) -> RegisteredActivation:
    cls = _REGISTERED.get(name)
    if cls is None or cls.grafs_spec != spec:
        cls = _make_class(name, spec)
    return cls.__new__(cls)   # pickle then sets the instance's state


def register(name: str, formula, *, backend: str = "inductor", clip: bool = False,
             ell: float = DEFAULT_ELL) -> type[RegisteredActivation]:
    """Make ``formula`` the activation called ``name`` in transformers and timm.

    Afterwards ``ACT2FN[name]``, ``config.hidden_act = name`` (transformers) and
    ``get_act_layer(name)``, ``create_model(..., act_layer=name)`` (timm, which lower-cases
    names) build ``grafs.compile(formula, backend, clip=clip, ell=ell)`` modules, whether the
    library is imported before or after this call. Registering a name again replaces its
    formula for modules built from then on. A name the library already defines itself
    (``"gelu"``) is refused. Returns the class, usable directly as ``cls()``.
    """
    from grafs.grammar.parser import parse

    _check_spelling(name)
    if backend not in BACKENDS:
        raise CompileError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    expr = formula if isinstance(formula, E.Expr) else parse(formula)
    cls = _make_class(name, (expr, backend, bool(clip), float(ell)))
    cls()  # compile errors now, not inside a library's model constructor
    with _LOCK:
        loaded = _loaded()
        for target, mod in loaded:  # check every library before changing any
            _check_free(target, mod, name)
        _REGISTERED[name] = cls
        for target, mod in loaded:
            target.add(mod, target.key(name), cls)
        for target in TARGETS:
            if target.MODULE not in _HOOKED:
                _HOOKED.add(target.MODULE)
                post_import.when_imported(target.MODULE, lambda mod, t=target: _install_all(t, mod))
    return cls


def check_name(name: str) -> None:
    """A GrafsError unless :func:`register` can take ``name``: its spelling, and no loaded
    library defining it already (callers that register at the end of a long run check first)."""
    _check_spelling(name)
    with _LOCK:
        for target, mod in _loaded():
            _check_free(target, mod, name)


def _check_spelling(name) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise GrafsError(f"activation name {name!r} is not accepted: use letters, digits, '_', "
                         f"'.' or '-', starting with a letter or '_' (e.g. 'grafs_act')")


def _loaded() -> list[tuple[ModuleType, ModuleType]]:
    """(target, its registry module) for every supported library imported so far."""
    return [(t, sys.modules[t.MODULE]) for t in TARGETS if t.MODULE in sys.modules]


def unregister(name: str) -> None:
    """Remove a name :func:`register` added (modules already built keep working)."""
    with _LOCK:
        cls = _REGISTERED.pop(name, None)
        if cls is None:
            known = ", ".join(map(repr, _REGISTERED)) or "none"
            raise GrafsError(f"no activation {name!r} was registered with grafs (registered: {known})")
        for target, mod in _loaded():
            target.remove(mod, target.key(name), cls)


def registered() -> dict[str, str]:
    """The registered names and their formulas."""
    with _LOCK:
        return {n: str(c.grafs_spec[0]) for n, c in _REGISTERED.items()}


def _check_free(target: ModuleType, mod: ModuleType, name: str) -> None:
    owner = target.owner(mod, target.key(name), is_registered_class)
    if owner is not None and owner != name:
        what = f"registered by grafs as {owner!r}" if owner else "one of its built-in activations"
        raise GrafsError(f"{target.LIBRARY} already has an activation {target.key(name)!r} "
                         f"({what}); register the formula under another name")


def _install_all(target: ModuleType, mod: ModuleType) -> None:
    """Post-import hook: the library's registry module has just run; add every name."""
    with _LOCK:
        for name, cls in list(_REGISTERED.items()):
            try:
                _check_free(target, mod, name)
            except GrafsError as e:  # never break the library's import
                warnings.warn(f"grafs activation {name!r} not added: {e}", stacklevel=2)
                continue
            target.add(mod, target.key(name), cls)


def is_registered_class(value) -> bool:
    return isinstance(value, type) and issubclass(value, RegisteredActivation)
