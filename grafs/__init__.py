"""grafs: find a better activation function for your model with a few training runs.

Write activations as strings, compile them to fused PyTorch modules, and run a GRAFS search
(gradient-based activation function search, Strack et al.) over a space of such formulas.
"""
from grafs.errors import (ArityError, CompileError, GrafsError, ParseError, SearchError,
                          SearchSpaceError, UnknownFunctionError)
from grafs.grammar import Expr, parse
from grafs.compiler import Activation, compile, to_python
from grafs.runtime.schedule import shrink_schedule
from grafs.runtime.space import SearchSpace
from grafs.runtime.cell import RelaxedCell
from grafs.search import Act, SearchResult, replace_activations, search
from grafs.restarts import search_restarts
from grafs.callbacks import Callback
from grafs.tensorboard_logger import TensorBoardLogger  # imports tensorboard only when created
from grafs.integrations import register, registered, unregister  # transformers/timm by name
from grafs.onnx_export import export_onnx
import grafs.activations.terms  # noqa: F401  (registers xielu, pwlu, dyn, anact, … as grammar terms)

__version__ = "0.1.0"

__all__ = [
    "parse", "Expr", "compile", "to_python", "Activation",
    "SearchSpace", "RelaxedCell", "shrink_schedule",
    "search", "search_restarts", "SearchResult", "replace_activations", "Act", "Callback", "TensorBoardLogger",
    "register", "unregister", "registered", "export_onnx",
    "GrafsError", "ParseError", "ArityError", "UnknownFunctionError", "CompileError",
    "SearchError", "SearchSpaceError",
]
