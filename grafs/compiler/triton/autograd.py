"""How the generated Triton kernels enter autograd and torch.compile.

Inside ``torch.compile`` they run as ``torch.library.custom_op`` s (fake impls and autograd
registered), so Dynamo traces through them; outside, as plain autograd Functions (a custom op's
Python dispatch costs tens of microseconds per call, paid at every activation site). Either way
autograd saves only the input and the small parameter vectors; the kernels are found by the
key :meth:`grafs.compiler.triton.launch.Compiled.register` gave them.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from grafs.compiler.triton.launch import lookup

__all__ = ["formula_fwd", "formula_bwd", "cell_fwd", "cell_bwd", "FormulaFn", "CellFn", "one_pass_call"]


# -- torch.library custom ops: torch.compile traces through them ---------------------------------
@torch.library.custom_op("grafs_triton::formula_fwd", mutates_args=())
def formula_fwd(x: torch.Tensor, p: torch.Tensor, key: str) -> torch.Tensor:
    c, block = lookup(key)
    return c.forward(x, p, block)


@formula_fwd.register_fake
def _(x, p, key):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("grafs_triton::formula_bwd", mutates_args=())
def formula_bwd(x: torch.Tensor, p: torch.Tensor, gy: torch.Tensor,
                key: str) -> tuple[torch.Tensor, torch.Tensor]:
    c, block = lookup(key)
    return c.backward(x, p, gy, block)


@formula_bwd.register_fake
def _(x, p, gy, key):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(p)


def _formula_setup(ctx, inputs, output):
    x, p, key = inputs
    ctx.save_for_backward(x, p)
    ctx.key = key


def _formula_backward(ctx, gy):
    x, p = ctx.saved_tensors
    gx, gp = formula_bwd(x, p, gy, ctx.key)
    return gx, gp, None


formula_fwd.register_autograd(_formula_backward, setup_context=_formula_setup)


@torch.library.custom_op("grafs_triton::cell_fwd", mutates_args=())
def cell_fwd(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, mask: torch.Tensor,
             key: str) -> torch.Tensor:
    c, block = lookup(key)
    return c.forward(x, w, g, mask, block)


@cell_fwd.register_fake
def _(x, w, g, mask, key):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("grafs_triton::cell_bwd", mutates_args=())
def cell_bwd(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, mask: torch.Tensor,
             gy: torch.Tensor, key: str, need_wg: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c, block = lookup(key)
    return c.backward(x, w, g, mask, gy, block, need_wg)


@cell_bwd.register_fake
def _(x, w, g, mask, gy, key, need_wg):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(w),
            torch.empty_like(g))


def _cell_setup(ctx, inputs, output):
    x, w, g, mask, key = inputs
    ctx.save_for_backward(x, w, g, mask)
    ctx.key = key


def _cell_backward(ctx, gy):
    x, w, g, mask = ctx.saved_tensors
    need_wg = bool(ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
    gx, gw, gg = cell_bwd(x, w, g, mask, gy, ctx.key, need_wg)
    return gx, (gw if ctx.needs_input_grad[1] else None), (gg if ctx.needs_input_grad[2] else None), \
        None, None


cell_fwd.register_autograd(_cell_backward, setup_context=_cell_setup)


# -- outside torch.compile: plain autograd Functions (a custom op's Python dispatch costs
# tens of microseconds per call, paid at every activation site) -------------------------------
class FormulaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, kernels, block):
        ctx.save_for_backward(x, p)
        ctx.kernels, ctx.block = kernels, block
        return kernels.forward(x, p, block)

    @staticmethod
    def backward(ctx, gy):
        if torch.is_grad_enabled():
            from grafs.errors import CompileError
            raise CompileError("a second derivative (create_graph=True) of a formula compiled "
                               "with backend='triton': its kernels compute first derivatives "
                               "only; use backend='inductor' (the default) or 'eager'")
        x, p = ctx.saved_tensors
        gx, gp = ctx.kernels.backward(x, p, gy, ctx.block)
        return gx, gp, None, None


def one_pass_call(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> bool:
    """Whether a cell call takes the kernels' one pass (y and dy/dx together): a weight call,
    i.e. a gradient for x only (α and γ frozen) under grad mode, with x in fp32 (its saved
    dy/dx then has x's dtype and memory, and gy·dy/dx is the two-kernel path's ∂x to the bit).
    Decided from the call alone, so a checkpointed forward and its recomputation agree."""
    return (torch.is_grad_enabled() and x.requires_grad and x.dtype == torch.float32
            and not (w.requires_grad or g.requires_grad))


class CellFn(torch.autograd.Function):
    """The generated cell kernels (Triton or C) under autograd: first derivatives only."""

    @staticmethod
    def forward(ctx, x, w, g, mask, kernels, block, one_pass=False):
        ctx.kernels, ctx.block, ctx.one_pass = kernels, block, one_pass
        if one_pass:
            # a weight call (see :func:`one_pass_call`): y and dy/dx in one pass, the backward
            # a multiplication; dy/dx is saved in x's place (fp32, as x)
            y, d = kernels.forward_dx(x, w, g, mask, block)
            ctx.save_for_backward(d, w, g, mask)
            return y
        ctx.save_for_backward(x, w, g, mask)
        return kernels.forward(x, w, g, mask, block)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        if ctx.one_pass:
            d = ctx.saved_tensors[0]
            return gy.float() * d, None, None, None, None, None, None
        x, w, g, mask = ctx.saved_tensors
        nw, ng = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        gx, gw, gg = ctx.kernels.backward(x, w, g, mask, gy, ctx.block, nw or ng)
        return gx, (gw if nw else None), (gg if ng else None), None, None, None, None
