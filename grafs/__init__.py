"""grafs: find a better activation function for your model with a few training runs.

Write activations as strings, compile them to fused PyTorch modules, and run a GRAFS search
(gradient-based activation function search, Strack et al.) over a space of such formulas.

The formula layers (grammar, compiler) are imported here; the search stack, the tracking
and the integrations are imported on first use of their names, so that ``import
grafs.grammar`` loads neither the search nor TensorBoard or ONNX code.
"""
from importlib import import_module

from grafs.errors import (ArityError, CompileError, GrafsError, ParseError, SearchError,
                          SearchSpaceError, UnknownFunctionError)
from grafs.grammar import Expr, parse
from grafs.compiler import Activation, compile, to_python
import grafs.activations.terms  # noqa: F401  (registers xielu, pwlu, dyn, anact, … as grammar terms)

__version__ = "0.1.0"

#: public name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "SearchSpace": "grafs.runtime.space", "RelaxedCell": "grafs.runtime.cell",
    "shrink_schedule": "grafs.runtime.schedule",
    "search": "grafs.searching.entry", "SearchConfig": "grafs.searching.config",
    "search_restarts": "grafs.searching.restarts",
    "Searcher": "grafs.searching.searcher",
    "SearchResult": "grafs.searching.result", "replace_activations": "grafs.searching.sites",
    "Act": "grafs.searching.sites",
    "Callback": "grafs.callbacks.events", "TensorBoardLogger": "grafs.callbacks.tensorboard",
    "register": "grafs.integrations.registry", "registered": "grafs.integrations.registry",
    "unregister": "grafs.integrations.registry", "export_onnx": "grafs.integrations.onnx",
    "evaluate": "grafs.protocol.own_task",
}

__all__ = [
    "parse", "Expr", "compile", "to_python", "Activation",
    "SearchSpace", "RelaxedCell", "shrink_schedule",
    "search", "SearchConfig", "search_restarts", "Searcher", "SearchResult", "replace_activations", "Act", "Callback", "TensorBoardLogger",
    "register", "unregister", "registered", "export_onnx", "evaluate",
    "GrafsError", "ParseError", "ArityError", "UnknownFunctionError", "CompileError",
    "SearchError", "SearchSpaceError",
]


#: subpackages reachable as attributes after a plain ``import grafs`` (``grafs.tasks.get_task``,
#: as the docs write them), imported on first use like the names above
_SUBPACKAGES = ("activations", "callbacks", "cli", "compiler", "grammar", "integrations", "models",
                "ops", "protocol", "runtime", "searching", "tasks", "testing")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return import_module(f"grafs.{name}")      # (the import sets the attribute)
    raise AttributeError(f"module 'grafs' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))
