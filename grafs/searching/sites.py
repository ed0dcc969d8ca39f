"""Activation sites: find a model's activation modules and swap in a searchable wrapper."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from grafs.errors import GrafsError


DEFAULT_TYPES: tuple[type, ...] = (nn.ReLU, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Tanh,
                                   nn.Sigmoid, nn.Mish, nn.Softplus, nn.Hardswish, nn.SELU,
                                   nn.CELU, nn.PReLU, nn.ReLU6)


# ---------------------------------------------------------------------------------------------
# activation sites
class Act(nn.Module):
    """A placeholder activation for models that would otherwise call ``F.relu`` & co.

    Write ``self.act = grafs.Act("gelu")`` (any formula) in your model and call it; it computes
    that formula until :func:`replace_activations` (and so :func:`search`) swaps it out.
    """

    def __init__(self, formula: str = "relu(x)"):
        super().__init__()
        from grafs.compiler import compile as gcompile
        from grafs.ops import lookup
        op = lookup(formula.strip()) if isinstance(formula, str) else None
        if op is not None and op.arity == 1 and op.infix is None:
            formula = f"{op.name}(x)"       # a bare function name, e.g. Act("gelu")
        self.formula = formula
        self.fn = gcompile(formula, backend="eager")

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return repr(self.formula)


def replace_activations(model: nn.Module, factory: Callable[[nn.Module], nn.Module] | Callable[[], nn.Module],
                        types: Sequence[type] = DEFAULT_TYPES) -> int:
    """Replace every submodule of one of ``types`` (and every :class:`Act`) in place.

    ``factory`` is called once per site, with the module it replaces if it takes an argument.
    Returns the number of sites replaced; raises GrafsError if there are none.
    """
    import inspect
    check_not_searched(model)
    types = tuple(types) + (Act,)
    try:
        takes_arg = len(inspect.signature(factory).parameters) >= 1
    except (TypeError, ValueError):
        takes_arg = False
    count = 0
    stack = [model]
    while stack:
        parent = stack.pop()
        for name, child in list(parent.named_children()):
            if isinstance(child, types):
                setattr(parent, name, factory(child) if takes_arg else factory())
                count += 1
            else:
                stack.append(child)
    if count == 0:
        raise GrafsError(f"no activation modules of types {[t.__name__ for t in types]} found in "
                         f"{type(model).__name__}; use grafs.Act in place of functional calls")
    return count


def check_not_searched(model: nn.Module) -> None:
    """A GrafsError when ``model`` already holds a search's sites (a second cell would nest
    around the first, and the first one's state would ride along)."""
    if any(isinstance(m, SearchSite) for m in model.modules()):
        raise GrafsError(f"{type(model).__name__} already holds a search's sites (grafs.SearchSite: a "
                         f"grafs.Searcher or grafs.searching.loop.search changed it in place); "
                         f"search or train a fresh model, or a copy made before the search")


class SearchSite(nn.Module):
    """One activation site during a search: the original activation (for warm-start weight
    steps) and the shared relaxed cell."""

    def __init__(self, original: nn.Module, cell: nn.Module, state: dict):
        super().__init__()
        self.original = original
        self.cell = cell
        self._state = state  # shared: {"use_cell": bool}

    def forward(self, x):
        return self.cell(x) if self._state["use_cell"] else self.original(x)
