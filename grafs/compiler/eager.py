"""The eager backend: interpret a Program with plain torch ops (the reference semantics).

Constants are Python floats (fixed for a compiled formula); learnable parameters are tensors,
so changing their values never changes the program, and under torch.compile never recompiles.
"""
from __future__ import annotations

import torch

from grafs.compiler.lower import Program, lower
from grafs.ops import OPS


def run_program(prog: Program, x: torch.Tensor, params, vectors=None, modules=None) -> torch.Tensor:
    """``params``: name -> tensor; ``vectors``: {"w": tensor, "g": tensor} for cell programs;
    ``modules``: key -> nn.Module for the trainable-family instructions."""
    env: list = []

    def val(a):
        k = a[0]
        if k == "x":
            return x
        if k == "t":
            return env[a[1]]
        if k == "c":
            return a[1]
        if k == "p":
            return params[a[1]]
        if k == "F":
            return torch.full_like(x, a[1])
        return vectors[k][a[1]]

    for ins in prog.instrs:
        if ins.key is not None:  # a family module takes inputs shaped like x (x-free ones too)
            env.append(modules[ins.key](*[shaped_like(val(a), x) for a in ins.args]))
        else:
            env.append(OPS[ins.op].torch(*[val(a) for a in ins.args]))
    return as_output(val(prog.result), x)


def shaped_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``v`` broadcast to x's shape, as its own tensor (modules may write into their inputs)."""
    return v if v.shape == x.shape else torch.broadcast_to(v, x.shape).contiguous()


def as_output(out, x: torch.Tensor) -> torch.Tensor:
    """Constant or parameter-only formulas still return a tensor shaped and typed like x."""
    if not isinstance(out, torch.Tensor):
        return torch.full_like(x, out)
    if out.shape != x.shape:
        out = out.expand(torch.broadcast_shapes(out.shape, x.shape))
    return out if out.dtype == x.dtype else out.to(x.dtype)


def run_expr(expr, x: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    """Evaluate an Expr once (parameters at their initial values unless given)."""
    prog = lower(expr)
    p = {n: torch.tensor(v, dtype=x.dtype, device=x.device) for n, v in prog.params}
    p.update(params or {})
    mods = {i.key: OPS[i.op].module().to(x.device) for i in prog.instrs if i.key is not None}
    return run_program(prog, x, p, modules=mods)
