"""The eager backend: interpret a Program with plain torch ops (the reference semantics).

Constants are Python floats (fixed for a compiled formula); learnable parameters are tensors,
so changing their values never changes the program, and under torch.compile never recompiles.
"""
from __future__ import annotations

import torch

from grafs.compiler.lower import Program, lower
from grafs.ops import OPS


def run_program(prog: Program, x: torch.Tensor, params) -> torch.Tensor:
    env: list = []
    for ins in prog.instrs:
        vals = []
        for a in ins.args:
            k = a[0]
            vals.append(x if k == "x" else env[a[1]] if k == "t" else a[1] if k == "c"
                        else params[a[1]])
        env.append(OPS[ins.op].torch(*vals))
    r = prog.result
    out = x if r[0] == "x" else env[r[1]] if r[0] == "t" else r[1] if r[0] == "c" else params[r[1]]
    return as_output(out, x)


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
    return run_program(prog, x, p)
