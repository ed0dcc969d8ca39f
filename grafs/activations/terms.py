"""The trainable families as grammar terms and as candidate search ops.

Registered in the op registry as *module ops*: the compiler instantiates the family's module
once per node and calls it with the node's inputs:

  xielu(E), xiprelu(E), pwlu(E)   m(E)                    (any expression E)
  dyn(E)                          m(E, x)                 f = E·(α − β) + β·x
  anact(E)                        m(x, E, dE/dx)          ANAct of δ = E, δ' from the compiler

Their learnable state lives in the module (``Activation.terms``), so a formula string such as
``"anact(silu(x))"`` means a freshly initialised family, trained with the network. They have no
closed form: no sympy elementary form, no symbolic derivative, no standalone Python export.
As search candidates (``SEARCH_OPS``: ``xielu``, ``xiprelu``, ``pwlu``, ``dyn_silu``,
``anact_silu``) their parameters are network weights, and the cell must run in eager mode.
"""
from __future__ import annotations

from grafs.activations.anact import ANActTerm
from grafs.activations.dyn import DynTerm
from grafs.activations.pwlu import PWLU
from grafs.activations.xielu import XIELU, XIPReLU
from grafs.errors import CompileError
from grafs.grammar import expr as E
from grafs.ops import OPS, SEARCH_OPS, Op, SearchOp, register


def _no_torch(*args):
    raise CompileError("trainable families are evaluated through their module (compile the formula)")


def _no_closed_form(name):
    def f(*args):
        raise CompileError(f"{name} has learnable state and no closed form in elementary functions")
    return f


def _family(name, display, module, inputs, doc):
    if name in OPS:
        return OPS[name]
    return register(Op(name, 1, _no_torch, _no_closed_form(display), None, "", display=display,
                       module=module, module_inputs=inputs, doc=doc))


_family("xielu", "xIELU", XIELU, lambda n: [n.args[0]], "xIELU (seeds/003), trainable αp, αn")
_family("xiprelu", "xIPReLU", XIPReLU, lambda n: [n.args[0]], "xIPReLU (seeds/003)")
_family("pwlu", "PWLU", PWLU, lambda n: [n.args[0]], "layer-wise PWLU, 16 intervals (seeds/000)")
_family("dyn", "dyn", DynTerm, lambda n: [n.args[0], E.var()],
        "dynActivation (seeds/002): E·(α − β) + β·x, starts equal to E")
_family("anact", "ANAct", ANActTerm, lambda n: [E.var(), n.args[0], n.args[0].derivative()],
        "ANAct (seeds/004): (λ + 0.3·tanh(a))·(E − μ), λ from running ρ, ρ′")


def _wrapped(op: str, base: str):
    """Search op applying family ``op`` around ``base`` of the hole input u (inputs expanded
    here, with the derivative taken w.r.t. u)."""
    def build(a, g, ell):
        u = a[0]
        inner = E.call(base, E.var())
        e = E.substitute(inner, {id(E.var()): u})
        if op == "dyn":
            return E.Expr("dyn", [e, u])
        d = E.substitute(inner.derivative(), {id(E.var()): u})
        return E.Expr("anact", [u, e, d])
    return build


for _name, _build, _label in [
    ("xielu", lambda a, g, l: E.call("xielu", a[0]), "xIELU(x)"),
    ("xiprelu", lambda a, g, l: E.call("xiprelu", a[0]), "xIPReLU(x)"),
    ("pwlu", lambda a, g, l: E.call("pwlu", a[0]), "PWLU(x)"),
    ("dyn_silu", _wrapped("dyn", "silu"), "dyn(SiLU(x))"),
    ("anact_silu", _wrapped("anact", "silu"), "ANAct(SiLU(x))"),
]:
    SEARCH_OPS.setdefault(_name, SearchOp(_name, "unary", _build, (), _label))
