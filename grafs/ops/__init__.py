"""The op registry: the single source of truth for every op grafs knows.

registry.py: :class:`Op`, the table and its lookups; table.py: the base ops; search_ops.py:
the GRAFS search vocabulary.

Each :class:`Op` declares its canonical name and aliases, arity (tensor arguments) and trailing
numeric scalars (e.g. the slope of ``leaky_relu``), the torch implementation, the sympy
counterpart (in elementary functions), the derivative (as expressions over registry ops, for
the chain rule), the Python-export template, whether the output is bounded and how it is
clipped when bounded-op clipping is on. The grammar, printers, sympy bridge, compiler backends
and the GRAFS search space all read these tables; nothing else hard-codes an op.

:data:`SEARCH_OPS` declares the 23 unary and 9 binary candidate ops of the GRAFS cell
(seeds/001 Fig. 1; definitions and clipping as the reference code), each built from
registry ops, with its learnable γ and their initialisation; :data:`EXTRA_UNARY` (``sin``,
``cos``) are further candidates outside the paper's space, used only when a space asks for them.
"""
from grafs.ops.registry import (OPS, Op, Scalar, function_names, get_op, lookup, node,  # noqa: F401
                                register, suggest)
from grafs.ops.table import SELU_ALPHA, SELU_SCALE, SQRT2, SQRT2PI  # noqa: F401  (registers the base ops)
from grafs.ops.search_ops import (EXTRA_UNARY, GRAFS_BINARY, GRAFS_UNARY, SEARCH_OPS,  # noqa: F401
                                  GammaInit, SearchOp)
