"""The op registry: :class:`Op` (what every op declares) and the table grafs looks ops up in.

Each :class:`Op` declares its canonical name and aliases, arity (tensor arguments) and trailing
numeric scalars (e.g. the slope of ``leaky_relu``), the torch implementation, the sympy
counterpart (in elementary functions), the derivative (as expressions over registry ops, for
the chain rule), the Python-export template, whether the output is bounded and how it is
clipped when bounded-op clipping is on. The base ops are declared in :mod:`grafs.ops.table`;
the kernel backends' spellings of them live with the backends (grafs.compiler.triton.spellings,
grafs.compiler.cell.c_spellings).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from grafs.errors import GrafsError

@dataclass(frozen=True)
class Scalar:
    """A trailing numeric argument of an op (a number or a learnable ``{param}``, never x)."""
    name: str
    default: float

@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    torch: Callable                      # (*tensor_args, *scalars) -> Tensor
    sympy: Callable                      # (*sympy_args) -> sympy expr, elementary functions
    grad: Callable | None                # (*arg_exprs) -> partials w.r.t. the tensor args
    py: str                              # Python-export template ({0}, {1}, … are the arguments)
    aliases: tuple[str, ...] = ()
    scalars: tuple[Scalar, ...] = ()
    display: str | None = None           # sympy/LaTeX function name (GELU, LeakyReLU, …)
    sympy_native: Callable | None = None # a sympy function that keeps the op symbolic
    bounded: bool = False                # |output| bounded for every input
    clip: Callable | None = None         # (args, ell) -> clipped Expr, for clip=True
    py_tensor_scalars: str | None = None # export template when a scalar is a learnable tensor
    # kernel spellings of an op registered from outside (the built-in ops' spellings live with
    # the backends: grafs.compiler.triton.spellings, grafs.compiler.cell.c_spellings)
    triton: str | None = None            # Triton expression template (tl./libdevice, fp32 args)
    c: str | None = None                 # C SIMD-vector expression template
    infix: str | None = None             # + - * / ^ for the printers
    doc: str = ""
    # trainable families (grafs.activations): the compiler instantiates module() per node and
    # calls it with module_inputs(node) (Exprs, e.g. the wrapped expression, x, its derivative)
    module: Callable | None = None
    module_inputs: Callable | None = None

    def arity_text(self) -> str:
        names = ["a", "b", "c"][: self.arity] if self.arity > 1 else ["x"]
        sig = ", ".join(names + [f"{s.name}={s.default:g}" for s in self.scalars])
        n = (f"{self.arity} argument{'s' if self.arity > 1 else ''}" if not self.scalars
             else f"{self.arity} to {self.arity + len(self.scalars)} arguments")
        return f"{n}: {self.name}({sig})"

def node(name: str, *args):
    """The expression ``name(*args)`` built by the node type of its arguments (grafs.grammar's
    Expr): derivative rules and clips are written over registry ops, and the registry, which
    the grammar builds on, does not import the grammar."""
    for a in args:
        build = getattr(type(a), "call", None)
        if build is not None:
            return build(name, *args)
    raise TypeError(f"node({name!r}, ...) needs at least one expression argument, got {args!r}")

OPS: dict[str, Op] = {}
# lookup by canonical name or alias, case-insensitive, underscores ignored (LeakyReLU == leaky_relu)
_LOOKUP: dict[str, str] = {}

def _key(name: str) -> str:
    return name.lower().replace("_", "")

def register(op: Op) -> Op:
    """Add an op to the registry (the base ops of grafs.ops.table, the grammar terms of
    grafs.activations)."""
    if op.name in OPS and OPS[op.name] is not op:
        raise GrafsError(f"an op named {op.name!r} is already registered")
    OPS[op.name] = op
    for n in (op.name, *op.aliases, *((op.display,) if op.display else ())):
        _LOOKUP[_key(n)] = op.name
    return op

def lookup(name: str) -> Op | None:
    canon = _LOOKUP.get(_key(name))
    return OPS[canon] if canon else None

def get_op(name: str) -> Op:
    op = lookup(name)
    if op is None:
        raise GrafsError(f"unknown function {name!r}{suggest(name)}")
    return op

def suggest(name: str) -> str:
    """'; did you mean …?' with the closest known names, or ''."""
    names = sorted(_LOOKUP)
    close = difflib.get_close_matches(_key(name), names, n=3, cutoff=0.6)
    if not close:
        return ""
    pretty = [OPS[_LOOKUP[c]].name for c in close]
    pretty = list(dict.fromkeys(pretty))
    return "; did you mean " + " or ".join(repr(p) for p in pretty) + "?"

def function_names() -> list[str]:
    """Canonical names of the functions the grammar accepts (no infix operators)."""
    return sorted(n for n, op in OPS.items() if op.infix is None and n != "neg")
