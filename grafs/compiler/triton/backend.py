"""The ``triton`` backend: grafs' own generated Triton kernels, as differentiable callables.

:class:`TritonFormula` runs a formula's generated forward/backward kernel pair;
:class:`TritonCell` the relaxed GRAFS cell's. The parts, each readable on its own:

* grafs.compiler.reverse — symbolic reverse-mode differentiation over the Expr DAG (usable by
  any backend that emits code);
* grafs.compiler.triton.emit — Triton source for formulas (the :class:`Emitter`, templates);
* grafs.compiler.cell.plan — Triton source for the relaxed cell;
* grafs.compiler.triton.interp — kernel-file preludes, with the interpreter's shims;
* grafs.compiler.triton.launch — loading, caching and launching the kernels;
* grafs.compiler.triton.autograd — custom ops (for torch.compile) and autograd Functions.

Running: on CUDA, or on any device with ``TRITON_INTERPRET=1`` (Triton's CPU interpreter,
slow). ``triton`` is imported only when a kernel runs (never at ``import grafs``).
"""
from __future__ import annotations

import torch

from grafs.compiler.lower import Program
from grafs.compiler.reverse import formula_gradients, program_expr
from grafs.compiler.cell.plan import cell_source
from grafs.compiler.triton.emit import triton_source
from grafs.compiler.triton.launch import (CellKernels, FormulaKernels, interpreting,
                                          kernel_cache_size)
from grafs.compiler.triton.autograd import CellFn, FormulaFn, cell_fwd, formula_fwd

__all__ = ["TritonFormula", "TritonCell", "triton_source", "cell_source", "program_expr",
           "formula_gradients", "kernel_cache_size", "interpreting"]


class TritonFormula:
    """A formula's generated forward/backward Triton kernels as a differentiable callable.

    ``TritonFormula(program)(x, params) -> Tensor``: ``params`` maps parameter names to tensors
    (e.g. the Activation's ``nn.ParameterDict``); gradients flow to ``x`` and every parameter.
    """

    def __init__(self, program: Program, block: int | None = None):
        self.program = program
        self.param_names = tuple(n for n, _ in program.params)
        self._k, self.key = FormulaKernels(program).register(block)
        self._block = block
        self.source = self._k.source      # the GPU variant (what `grafs compile --emit triton` prints)
        self._none: dict[torch.device, torch.Tensor] = {}   # the parameter vector of none

    def kernels(self, interp: bool | None = None) -> tuple:
        """The (forward, backward) kernel objects for the interpreter or the GPU."""
        return self._k.kernels(interpreting() if interp is None else interp)

    def __call__(self, x: torch.Tensor, params=None) -> torch.Tensor:
        compiling = torch.compiler.is_compiling()
        p = self._param_vector(x, {} if params is None else params, compiling)
        if compiling:
            return formula_fwd(x, p, self.key)
        return FormulaFn.apply(x, p, self._k, self._block)

    def _param_vector(self, x: torch.Tensor, params, compiling: bool) -> torch.Tensor:
        """The parameters as the fp32 vector the kernels read, launching no kernel where it can:
        a view for one parameter, a cached placeholder for none (a stack or a fill would be an
        extra launch per call)."""
        names = self.param_names
        if len(names) > 1:
            return torch.stack([params[n].reshape(()).to(device=x.device, dtype=torch.float32)
                                for n in names])
        if names:
            return params[names[0]].reshape(1).to(device=x.device, dtype=torch.float32)
        if compiling:
            return torch.zeros(1, dtype=torch.float32, device=x.device)
        p = self._none.get(x.device)
        if p is None:
            p = self._none[x.device] = torch.zeros(1, dtype=torch.float32, device=x.device)
        return p

    def __repr__(self) -> str:
        return f"TritonFormula({self.program.text!r})"


class TritonCell:
    """The relaxed cell as one generated Triton kernel pair, for the full op set of ``space``.

    ``TritonCell(space, slot_of, gamma_of, clip)(x, w, g, mask) -> y``, differentiable w.r.t.
    ``x``, the mixture weights ``w`` (one per slot) and the γ vector ``g``. ``mask`` (one entry
    per slot, nonzero = active) selects the ops at run time, so shrinking the cell reuses the
    same kernels. ``slot_of``/``gamma_of`` as in :class:`grafs.runtime.cell.RelaxedCell`.
    """

    def __init__(self, space, slot_of, gamma_of, clip: bool, block: int | None = None,
                 active=None):
        self.space = space
        self.clip = bool(clip)
        self.active = active
        self._k, self.key = CellKernels(space, dict(slot_of),
                                         {k: list(v) for k, v in gamma_of.items()},
                                         self.clip, active).register(block)
        self._block = block
        self.num_slots = self._k.K
        self.source = self._k.source

    def kernels(self, interp: bool | None = None) -> tuple:
        return self._k.kernels(interpreting() if interp is None else interp)

    def __call__(self, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        if g.numel() == 0:
            g = torch.zeros(0, dtype=torch.float32, device=x.device)
        # the small vectors follow x (a no-op when they are there already)
        w, g, mask = w.to(x.device), g.to(x.device), mask.to(x.device)
        if torch.compiler.is_compiling():
            return cell_fwd(x, w, g, mask, self.key)
        return CellFn.apply(x, w, g, mask, self._k, self._block)

    def __repr__(self) -> str:
        return f"TritonCell({self.space.template!r}, {self.num_slots} slots, clip={self.clip})"
