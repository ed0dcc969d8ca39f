"""Trainable activation families from the seeds (DESIGN.md §6).

Modules: :class:`XIELU`, :class:`XIPReLU` (seeds/003), :class:`PWLU` (seeds/000),
:class:`ANAct` (seeds/004), :class:`DynActivation` (seeds/002).

Lower-level entry points for the expression compiler (a term wrapping an already
evaluated sub-expression):

* ``ANActTerm()(h, delta, delta_prime)`` — ANAct from δ(h) and δ′(h);
* ``DynTerm()(base_out, x)`` — dynActivation from base(x);
* functional forms ``xielu``, ``xiprelu``, ``pwlu``, ``pwlu_inference``, ``dyn``.
"""
from grafs.activations.anact import ANAct, ANActTerm, anact_batch_stats, anact_lambda
from grafs.activations.dyn import DynActivation, DynTerm, dyn
from grafs.activations.pwlu import PWLU, pwlu, pwlu_inference, pwlu_tables
from grafs.activations.xielu import (
    XIELU,
    XIPReLU,
    xielu,
    xielu_reference,
    xiprelu,
    xiprelu_reference,
)

__all__ = [
    "XIELU",
    "XIPReLU",
    "PWLU",
    "ANAct",
    "ANActTerm",
    "DynActivation",
    "DynTerm",
    "xielu",
    "xiprelu",
    "xielu_reference",
    "xiprelu_reference",
    "pwlu",
    "pwlu_inference",
    "pwlu_tables",
    "dyn",
    "anact_batch_stats",
    "anact_lambda",
]
