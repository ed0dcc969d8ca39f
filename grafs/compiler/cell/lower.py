"""Lowering of the relaxed cell and its fused, memory-lean autograd path.

The cell for a given active set is one Expr over x, the mixture-weight vector ``w`` (one slot per
(hole, op)) and the gamma vector ``g``: each hole computes ``sum_k w[k] * op_k(inputs)`` with
every op clipped as its search-op definition says. From it we generate Python source once per
active set and compile two functions with torch.compile (dynamic shapes):

* ``fwd(x, w, g)``: the cell output, run without autograd (no intermediates kept);
* ``bwd(x, w, g, grad_out)``: ``torch.func.vjp`` of ``fwd``: recomputes from x and fuses the
  recomputation with the gradients for x, w (then α through the Dirichlet sample) and g.

The autograd Function saves only x, w and g. Compiled code is cached per active set; see
:class:`FusedCell` for when a new active set gets new code.
"""
from __future__ import annotations

import torch

from grafs.compiler.codegen import function_source, load_source
from grafs.compiler.lower import Program, fold_constants, lower
from grafs.grammar import expr as E
from grafs.ops import SEARCH_OPS


def hole_mixture(space, hole, inputs, active, slot_of, gamma_of, ell, unit: bool = False):
    """Σ_k w[k]·op_k(inputs) over the hole's active ops; ``unit``: the hole has one active op
    whose weight is exactly 1 (a discrete cell), so the op alone."""
    terms = []
    for op_name in hole.ops:
        if op_name not in active:
            continue
        spec = SEARCH_OPS[op_name]
        gammas = [E.Expr("gref", value=j) for j in gamma_of[(hole.index, op_name)]]
        term = name_modules(spec.build(inputs, gammas, ell), f"{hole.name}_{op_name}", inputs)
        terms.append(term if unit else E.Expr("wref", value=slot_of[(hole.index, op_name)]) * term)
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def name_modules(term: E.Expr, key: str, inputs) -> E.Expr:
    """Trainable-family nodes a candidate op adds get a per-slot name: their module's key."""
    from grafs.ops import OPS
    given = {id(n) for i in inputs for n in E.topological(i)}   # the inputs keep their names

    def named(n: E.Expr, args: list[E.Expr]) -> E.Expr:
        name = key if (n.op in OPS and OPS[n.op].module is not None) else n.name
        return E.Expr(n.op, args, n.value, name) if args else n
    return E.rewrite(term, named, keep=lambda n: id(n) in given)


def substitute_holes(space, fill) -> E.Expr:
    """Rebuild the template with hole i replaced by ``fill(hole, input_exprs)``."""
    by_node = {id(h.node): h for h in space.holes}
    return E.rewrite(space.root, lambda n, args: fill(by_node[id(n)], args) if id(n) in by_node
                     else E.with_args(n, args))


def cell_expr(space, active: tuple[tuple[str, ...], ...], slot_of, gamma_of, clip: bool,
              unit: bool = False) -> E.Expr:
    ell = space.ell if clip else None
    return substitute_holes(space, lambda h, ins: hole_mixture(
        space, h, ins, set(active[h.index]), slot_of, gamma_of, ell, unit))


def discretized_expr(space, chosen: list[str], gamma_values, scales=None) -> E.Expr:
    """The formula with one op per hole, γ frozen to numbers, unclipped and lightly folded;
    ``scales``: a constant per hole multiplying its op (normalised searches)."""
    def fill(h, ins):
        spec = SEARCH_OPS[chosen[h.index]]
        out = spec.build(ins, [E.const(v) for v in gamma_values(h.index, chosen[h.index])], None)
        return out if scales is None or scales[h.index] == 1.0 else E.const(scales[h.index]) * out
    from grafs.grammar.simplify import apply_rules
    return apply_rules(fold_constants(substitute_holes(space, fill), strict=False))


class CellKernels:
    """Generated and compiled fwd/bwd for one active set."""

    def __init__(self, prog: Program):
        self.prog = prog
        mod = load_source(function_source(prog, "cell_fwd", vectors=True), prefix="grafs_cell")
        fwd = mod.cell_fwd

        def bwd(x, w, g, grad_out):
            _, vjp = torch.func.vjp(fwd, x, w, g)
            return vjp(grad_out)

        self.fwd_eager = fwd
        self.fwd = torch.compile(fwd, fullgraph=True, dynamic=True)
        self.bwd = torch.compile(bwd, fullgraph=True, dynamic=True)


class _CellFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, g, kernels):
        ctx.kernels = kernels
        ctx.save_for_backward(x, w, g)
        return kernels.fwd(x, w, g)

    @staticmethod
    def backward(ctx, grad_out):
        x, w, g = ctx.saved_tensors
        gx, gw, gg = ctx.kernels.bwd(x, w, g, grad_out.contiguous())
        return gx, gw, gg, None


def fused_apply(kernels: CellKernels, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor):
    flat = x.reshape(-1)
    return _CellFunction.apply(flat, w, g, kernels).view(x.shape)


def cell_program(space, active, slot_of, gamma_of, clip: bool, unit: bool = False) -> Program:
    n = sum(len(a) for a in active)
    return lower(cell_expr(space, active, slot_of, gamma_of, clip, unit),
                 text=f"relaxed {space.template} with {n} active ops, clip={clip}")
