"""grafs: find a better activation function for your model with a few training runs.

Write activations as strings, compile them to fused PyTorch modules, and run a GRAFS search
(gradient-based activation function search, Strack et al.) over a space of such formulas.
"""
from grafs.errors import (ArityError, CompileError, GrafsError, ParseError, SearchError,
                          SearchSpaceError, UnknownFunctionError)
from grafs.grammar import Expr, parse
from grafs.compiler import Activation, compile, to_python

__version__ = "0.1.0"

__all__ = [
    "parse", "Expr", "compile", "to_python", "Activation",
    "GrafsError", "ParseError", "ArityError", "UnknownFunctionError", "CompileError",
    "SearchError", "SearchSpaceError",
]
