"""The relaxed cell as generated C kernels on the CPU: its compiled kernels and their autograd.

:class:`CCell` is the CPU counterpart of grafs.compiler.triton.backend.TritonCell: the same cell
plan (grafs.compiler.cell.plan), written in C with SIMD vectors (grafs.compiler.cell.c_emit),
built into shared libraries (grafs.compiler.cell.c_build) and called through ctypes. One call
per forward and one per backward, whatever the number of ops; autograd saves only x, w, γ and
the mask (the backward recomputes), or, for a weight call on fp32 x (α and γ frozen), one call
computing y and dy/dx, saved in x's place (a second library, built with the first); the work is
split over torch's intra-op threads (ctypes releases the GIL).
"""
from __future__ import annotations

import ctypes
import os
import threading

import torch

from grafs.compiler.cell import c_build
from grafs.compiler.cell.c_emit import C, cell_c_one_pass_source, cell_c_source
from grafs.compiler.cell.plan import CellPlan
from grafs.errors import CompileError

__all__ = ["CCell", "CCellKernels"]

_PTR, _LONG, _INT = ctypes.c_void_p, ctypes.c_long, ctypes.c_int


class CCellKernels:
    """The compiled forward/backward pair of one cell plan: straight-line code for the active
    set it was built for, each slot's contributions selected by the mask (so it serves every
    subset of that set, bit for bit as that subset's own build, up to which NaN a NaN is)."""

    def __init__(self, space, slot_of, gamma_of, clip: bool, active=None):
        # unmasked: compiled for exactly the active set (a build is about a second), so the
        # backward shares every value with its forward recompute
        self.plan = plan = CellPlan(space, slot_of, gamma_of, clip, active, C, masked=False)
        self.K = plan.K
        self.NC = plan.n_partials
        self.n_gamma = 1 + max((j for js in gamma_of.values() for j in js), default=-1)
        self.gcols = torch.tensor(plan.gcols, dtype=torch.long)
        self.n_code = n_code = sum(len(v) for v in plan.slots.values())
        self._text = f"relaxed {space.template} with {plan.K} slots ({n_code} compiled), clip={clip}"
        self._isa = c_build.native_isa()
        if self._isa is None:       # e.g. $GRAFS_C_ISA set to a bad name after the first check
            raise CompileError(f"the C cell cannot be built: {c_build.no_isa_reason()}")
        self._source: str | None = None
        self._source_lock = threading.Lock()   # the emitters write into the shared plan
        self._lib: ctypes.CDLL | None = None
        self._future = None
        self._future_pid = 0        # the process whose build thread runs ``_future``
        self._one_pass_source: str | None = None
        self._one_pass_lib: ctypes.CDLL | None = None

    @property
    def source(self) -> str:
        """The C source, generated on first use: a background build generates it in the build
        thread too (about 30 ms of Python per active set at 110 ops, off the search's thread)."""
        if self._source is None:
            with self._source_lock:
                if self._source is None:
                    self._source = cell_c_source(self.plan, self._isa, self._text)
        return self._source

    @property
    def one_pass_source(self) -> str:
        """The C source of the weight call's one-pass kernel (:meth:`forward_dx`)."""
        if self._one_pass_source is None:
            with self._source_lock:
                if self._one_pass_source is None:
                    self._one_pass_source = cell_c_one_pass_source(self.plan, self._isa, self._text)
        return self._one_pass_source

    def _generate_and_build(self, side_by_side: bool) -> tuple[ctypes.CDLL, ctypes.CDLL]:
        """Both libraries of this plan: built together, so which kernels a call takes never
        depends on timing (a checkpointed forward and its recomputation take the same).
        ``side_by_side``: in two compiler processes (a caller is waiting: the one-pass library
        is the smaller, so the build takes about as long as the cell's alone on two cores);
        else one after the other (a background build: one core, as the search runs beside)."""
        if not side_by_side:
            return (c_build.build_library(self.source, self._isa),
                    c_build.build_library(self.one_pass_source, self._isa))
        other = c_build.one_pass_builder().submit(
            lambda: c_build.build_library(self.one_pass_source, self._isa))
        try:
            main = c_build.build_library(self.source, self._isa)
        finally:
            one_pass = other.result()
        return main, one_pass

    def start_build(self, side_by_side: bool = False) -> None:
        """Generate and compile in the background thread (the next :meth:`lib` waits);
        ``side_by_side``: the two libraries in two compiler processes (a search will wait for
        this build: its first)."""
        if self._lib is None and self._future is None:
            self._future_pid = os.getpid()
            self._future = c_build.builder().submit(self._generate_and_build, side_by_side)

    def _forked(self) -> bool:
        """In a process forked while this build was under way (its thread is the parent's and
        never finishes here), the build is started again, in this process, and True."""
        if self._future is None or self._future_pid == os.getpid() or self._lib is not None:
            return False
        self._future = None
        self._source_lock = threading.Lock()    # the parent's build thread may have held it
        self.start_build()
        return True

    def ready(self) -> bool:
        """Loaded, or a background build has finished (successfully or not)."""
        self._forked()
        return self._lib is not None or (self._future is not None and self._future.done())

    def lib(self) -> ctypes.CDLL:
        self._forked()
        if self._lib is None:
            # a background build's error is raised here, on the thread that needs the library
            lib, one_pass = (self._future.result() if self._future is not None
                             else self._generate_and_build(True))
            lib.grafs_cell_fwd.argtypes = [_PTR] * 5 + [_LONG]
            lib.grafs_cell_fwd.restype = None
            lib.grafs_cell_bwd.argtypes = [_PTR] * 7 + [_LONG, _INT]
            lib.grafs_cell_bwd.restype = None
            one_pass.grafs_cell_fwd_dx.argtypes = [_PTR] * 6 + [_LONG]
            one_pass.grafs_cell_fwd_dx.restype = None
            self._one_pass_lib = one_pass
            self._lib = lib
        return self._lib

    def one_pass(self) -> ctypes.CDLL:
        """The weight call's one-pass library (built with :meth:`lib`'s)."""
        self.lib()
        return self._one_pass_lib

    def _check(self, x, w, g, mask):
        if x.device.type != "cpu":
            raise CompileError(f"the C cell runs on the CPU, got a tensor on {x.device}")
        if w.numel() != self.K or mask.numel() != self.K:
            raise CompileError(f"the relaxed cell has {self.K} op slots; got {w.numel()} weights and "
                               f"a mask of {mask.numel()}")
        if g.numel() < self.n_gamma:
            raise CompileError(f"the relaxed cell uses {self.n_gamma} gammas; got {g.numel()}")

    @staticmethod
    def _f32(t: torch.Tensor) -> torch.Tensor:
        """``t`` as a contiguous fp32 CPU tensor (itself when it already is: the common case,
        so the per-call path dispatches nothing)."""
        if t.dtype != torch.float32:
            t = t.float()
        return t if t.is_contiguous() else t.contiguous()

    def _ptrs(self, w, g, mask):
        w, g = self._f32(w), self._f32(g) if g.numel() else self._no_gamma
        m = mask if mask.dtype == torch.int8 else mask.to(torch.int8)
        m = m if m.is_contiguous() else m.contiguous()
        return (w, g, m), (w.data_ptr(), g.data_ptr(), m.data_ptr())

    _no_gamma = torch.zeros(1, dtype=torch.float32)
    _no_part = torch.zeros(1, dtype=torch.float64)

    def forward(self, x, w, g, mask, block=None):
        self._check(x, w, g, mask)
        lib = self.lib()
        xc = self._f32(x)
        y = torch.empty(xc.shape, dtype=torch.float32)
        keep, p = self._ptrs(w, g, mask)
        xp, yp, n = xc.data_ptr(), y.data_ptr(), xc.numel()
        chunks = c_build.spans(n, self.n_code)
        if len(chunks) == 1:
            lib.grafs_cell_fwd(xp, *p, yp, n)
        else:
            c_build.run_spans(chunks, lambda a, b: lib.grafs_cell_fwd(xp + 4 * a, *p, yp + 4 * a,
                                                                      b - a))
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def forward_dx(self, x, w, g, mask, block=None) -> tuple[torch.Tensor, torch.Tensor]:
        """A weight call's forward (w and g frozen): y and dy/dx in one pass over x, so its
        backward is ``gy * dy/dx`` (the same memory as saving x): y is :meth:`forward`'s and
        ``gy * dy/dx`` :meth:`backward`'s ∂x, bit for bit."""
        self._check(x, w, g, mask)
        lib = self.one_pass()
        xc = self._f32(x)
        y = torch.empty(xc.shape, dtype=torch.float32)
        d = torch.empty(xc.shape, dtype=torch.float32)
        keep, p = self._ptrs(w, g, mask)
        xp, yp, dp, n = xc.data_ptr(), y.data_ptr(), d.data_ptr(), xc.numel()
        chunks = c_build.spans(n, 2 * self.n_code)
        if len(chunks) == 1:
            lib.grafs_cell_fwd_dx(xp, *p, yp, dp, n)
        else:
            c_build.run_spans(chunks, lambda a, b: lib.grafs_cell_fwd_dx(
                xp + 4 * a, *p, yp + 4 * a, dp + 4 * a, b - a))
        return (y if x.dtype == torch.float32 else y.to(x.dtype)), d

    def backward(self, x, w, g, mask, gy, block=None, need_wg: bool = True):
        lib = self.lib()
        xc, gyc = self._f32(x), self._f32(gy)
        gx = torch.empty(xc.shape, dtype=torch.float32)
        keep, p = self._ptrs(w, g, mask)
        n, NC, wg = xc.numel(), self.NC, int(bool(need_wg))
        chunks = c_build.spans(n, self.n_code)
        # (a weight call's kernel writes no partial sums)
        part = torch.zeros(len(chunks) * NC, dtype=torch.float64) if need_wg else self._no_part
        xp, gyp, gxp, pp = xc.data_ptr(), gyc.data_ptr(), gx.data_ptr(), part.data_ptr()
        if len(chunks) == 1:
            lib.grafs_cell_bwd(xp, *p, gyp, gxp, pp, n, wg)
        else:
            def run(a, b):
                i = a // (chunks[0][1] - chunks[0][0])       # the span's row of partial sums
                lib.grafs_cell_bwd(xp + 4 * a, *p, gyp + 4 * a, gxp + 4 * a, pp + 8 * NC * i,
                                   b - a, wg)
            c_build.run_spans(chunks, run)
        gx = gx if x.dtype == torch.float32 else gx.to(x.dtype)
        if not need_wg:
            return gx, None, None
        sums = part.view(len(chunks), NC).sum(0) if len(chunks) > 1 else part
        gw = sums[: self.K].to(w.dtype)
        gg = torch.zeros(g.shape, dtype=torch.float64)
        if len(self.plan.gcols):
            gg.index_add_(0, self.gcols, sums[self.K:self.K + len(self.plan.gcols)])
        return gx, gw, gg.to(g.dtype)


class CCell:
    """``CCell(space, slot_of, gamma_of, clip, active=None)(x, w, g, mask) -> y``,
    differentiable w.r.t. x, w and g (as :class:`grafs.compiler.triton.backend.TritonCell`)."""

    def __init__(self, space, slot_of, gamma_of, clip: bool, active=None):
        self.space = space
        self.active = active
        self._k = CCellKernels(space, dict(slot_of), {k: list(v) for k, v in gamma_of.items()},
                               bool(clip), active)
        self.num_slots = self._k.K

    @property
    def source(self) -> str:
        return self._k.source

    def build(self) -> "CCell":
        self._k.lib()
        return self

    def start_build(self, side_by_side: bool = False) -> None:
        self._k.start_build(side_by_side)

    def ready(self) -> bool:
        return self._k.ready()

    def __call__(self, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        from grafs.compiler.triton.autograd import CellFn, one_pass_call   # kernel-agnostic
        # (autocast needs no switching off: the kernels compute in fp32 whatever x's dtype)
        return CellFn.apply(x, w, g, mask, self._k, None, one_pass_call(x, w, g))

    def __repr__(self) -> str:
        return f"CCell({self.space.template!r}, {self.num_slots} slots)"
