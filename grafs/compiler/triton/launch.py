"""Loading and launching the generated Triton kernels.

A :class:`Compiled` holds the kernels of one generated source (a formula's or a cell's); the
GPU and interpreter variants of its file are written once under their content hash by
:func:`grafs.compiler.codegen.load_source` and loaded lazily. :class:`FormulaKernels` and
:class:`CellKernels` allocate outputs and partial-sum buffers, pick block sizes and launch.

Running: on CUDA (or another GPU Triton supports), or on any device with ``TRITON_INTERPRET=1``
(Triton's CPU interpreter, slow; read from ``os.environ`` at call time). ``triton`` is imported
only when a kernel runs (never at ``import grafs``).
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading

import torch

from grafs.compiler.codegen import load_source
from grafs.compiler.lower import Program
from grafs.compiler.cell.plan import CellPlan
from grafs.compiler.triton.emit import formula_source, module_source
from grafs.errors import CompileError

__all__ = ["Compiled", "FormulaKernels", "CellKernels", "lookup", "kernel_cache_size",
           "interpreting", "run_mode"]

_LOCK = threading.Lock()
_COMPILED: dict[str, "Compiled"] = {}     # source hash -> generated kernels (one per source)
_REG: dict[str, tuple] = {}                # op key -> (kernels, block size): what the ops run
_MODULES: dict[tuple[str, bool], object] = {}


def kernel_cache_size() -> int:
    """How many generated kernel files (formula or cell, per GPU/interpreter variant) this
    process has loaded."""
    return len(_MODULES)


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter (read now)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def _triton():
    try:
        import triton  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the install
        raise CompileError("the triton backend needs the 'triton' package (pip install "
                           "'grafs[triton]'); or use backend='inductor' or 'eager'") from err
    return triton


def run_mode(x: torch.Tensor) -> bool:
    """True for the interpreter, False for a GPU; raises CompileError where neither can run."""
    _triton()
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise CompileError(f"the triton backend computes float32/float16/bfloat16 inputs, got "
                           f"{x.dtype}; use backend='eager' or 'inductor' for {x.dtype}")
    if interpreting():
        return True
    if x.device.type == "cpu":
        raise CompileError("the triton backend runs on a GPU; for tensors on the CPU set "
                           "TRITON_INTERPRET=1 (Triton's interpreter: slow, for testing), or use "
                           "backend='inductor' or 'eager'")
    if x.device.type not in ("cuda", "xpu"):
        raise CompileError(f"the triton backend does not run on device {x.device}; use "
                           f"backend='inductor' or 'eager' (or TRITON_INTERPRET=1)")
    if not _GPU_OK:
        _check_gpu_triton()
    return False


_GPU_OK: list = []     # non-empty once triton is known to compile GPU kernels in this process


def _check_gpu_triton() -> None:
    from triton.runtime.interpreter import InterpretedFunction
    import triton.language as tl
    if isinstance(getattr(tl.standard, "sum", None), InterpretedFunction):
        raise CompileError("triton was imported while TRITON_INTERPRET=1, so it cannot compile "
                           "GPU kernels in this process; unset TRITON_INTERPRET before starting "
                           "Python to run on the GPU")
    _GPU_OK.append(True)   # how triton was imported cannot change later in the process


class Compiled:
    """Generated kernels of one formula or cell; the GPU and interpreter variants load lazily."""
    prefix = "grafs_triton"

    def __init__(self, make_source, names: tuple[str, ...]):
        self._make = make_source
        self.names = names
        self.source = make_source(False)
        self.key = hashlib.sha256(self.source.encode()).hexdigest()[:24]
        self._kernels: dict[bool, tuple] = {}

    def register(self, block: int | None) -> tuple["Compiled", str]:
        """The shared instance for this source and the key the custom ops look it up by."""
        if block is not None and (int(block) < 16 or int(block) & (int(block) - 1)):
            raise CompileError(f"block must be a power of two >= 16, got {block}")
        with _LOCK:
            c = _COMPILED.setdefault(self.key, self)
            key = f"{c.key}/b{int(block or 0)}"
            _REG[key] = (c, block)
        return c, key

    def kernels(self, interp: bool) -> tuple:
        k = self._kernels.get(interp)
        if k is None:
            _triton()
            from triton.runtime.interpreter import InterpretedFunction
            from triton.runtime.jit import JITFunction
            with _LOCK:
                src = self.source if not interp else self._make(True)
                mod = load_source(src, prefix=self.prefix)
                _MODULES[(self.key, interp)] = mod
            out = []
            for name in self.names:
                obj = getattr(mod, name)
                fn = getattr(obj, "fn", obj)
                if interp and not isinstance(obj, InterpretedFunction):
                    obj = InterpretedFunction(fn)
                elif not interp and not isinstance(obj, JITFunction):
                    obj = JITFunction(fn)
                out.append(obj)
            k = self._kernels[interp] = tuple(out)
        return k

    @staticmethod
    def launch(kernel, interp: bool, grid, *args, **meta):
        if interp:
            import numpy as np
            with np.errstate(all="ignore"):
                kernel[grid](*args, **meta)
            return
        dev = args[0].device
        if dev.type == "cuda" and dev.index is not None and dev.index != torch.cuda.current_device():
            with torch.cuda.device(dev):
                kernel[grid](*args, **meta)
        else:
            kernel[grid](*args, **meta)


def _blocks(n: int, block: int) -> int:
    return max(1, (n + block - 1) // block)


def _meta(interp: bool, B: int, warps8_from: int, **extra) -> dict:
    """Launch parameters; num_warps only on a GPU (8 from ``warps8_from`` elements, else 4)."""
    meta = {**extra, "BLOCK": B}
    if not interp:
        meta["num_warps"] = 8 if B >= warps8_from else 4
    return meta


class FormulaKernels(Compiled):
    # GPU launch: 1024 elements per program, 8 warps (4 per thread; 28-80 registers for the
    # paper formulas on sm_90, no spills). Interpreter: 128 (each tl op runs in numpy).
    def __init__(self, prog: Program):
        self.n_params = len(prog.params)
        super().__init__(functools.partial(formula_source, prog), ("grafs_fwd", "grafs_bwd"))

    @staticmethod
    def block(interp: bool, block: int | None) -> int:
        return block or (128 if interp else 1024)

    def forward(self, x: torch.Tensor, p: torch.Tensor, block=None) -> torch.Tensor:
        interp = run_mode(x)
        xc = x.contiguous()
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        n = xc.numel()
        if n == 0:
            return y
        fwd, _ = self.kernels(interp)
        B = self.block(interp, block)
        self.launch(fwd, interp, (_blocks(n, B),), xc, p.contiguous(), y, n,
                    **_meta(interp, B, 1024))
        return y

    def backward(self, x, p, gy, block=None):
        interp = run_mode(x)
        xc, gyc = x.contiguous(), gy.to(x.dtype).contiguous()
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        n = xc.numel()
        NP = max(self.n_params, 1)
        if n == 0:
            return gx, torch.zeros_like(p)
        _, bwd = self.kernels(interp)
        B = self.block(interp, block)
        grid = _blocks(n, B)
        part = torch.zeros((grid, NP), dtype=torch.float32, device=x.device)
        self.launch(bwd, interp, (grid,), xc, p.contiguous(), gyc, gx, part, n,
                    **_meta(interp, B, 1024, NP=NP))
        gp = part.sum(0)[: p.numel()] if self.n_params else torch.zeros_like(p, dtype=torch.float32)
        return gx, gp.to(p.dtype)


class CellKernels(Compiled):
    # GPU launch: 512 elements, 8 warps: the full 110-slot backward needs 128 registers per
    # thread on sm_90 without spills (228 with 4 warps).
    prefix = "grafs_triton_cell"

    def __init__(self, space, slot_of, gamma_of, clip: bool, active=None):
        self.plan = plan = CellPlan(space, slot_of, gamma_of, clip, active)
        self.K = plan.K
        self.n_gamma = 1 + max((j for js in gamma_of.values() for j in js), default=-1)
        self.gcols = torch.tensor(plan.gcols, dtype=torch.long)
        n_code = sum(len(v) for v in plan.slots.values())
        text = f"relaxed {space.template} with {plan.K} slots ({n_code} compiled), clip={clip}"

        def make(interp: bool) -> str:
            return module_source("relaxed cell", text, plan.forward_body() + "\n\n" + plan.backward_body(),
                           interp)
        super().__init__(make, ("grafs_cell_fwd", "grafs_cell_bwd"))

    @staticmethod
    def block(interp: bool, block: int | None) -> int:
        return block or (128 if interp else 512)

    def _check(self, x, w, g, mask):
        if w.numel() != self.K or mask.numel() != self.K:
            raise CompileError(f"the relaxed cell has {self.K} op slots; got {w.numel()} weights and "
                               f"a mask of {mask.numel()}")
        if g.numel() < self.n_gamma:
            raise CompileError(f"the relaxed cell uses {self.n_gamma} gammas; got {g.numel()}")

    def forward(self, x, w, g, mask, block=None):
        self._check(x, w, g, mask)
        interp = run_mode(x)
        xc = x.contiguous()
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        n = xc.numel()
        if n == 0:
            return y
        fwd, _ = self.kernels(interp)
        B = self.block(interp, block)
        self.launch(fwd, interp, (_blocks(n, B),), xc, w.contiguous(), _gvec(g, x),
                    mask.to(device=x.device, dtype=torch.int8).contiguous(), y, n,
                    **_meta(interp, B, 512))
        return y

    def backward(self, x, w, g, mask, gy, block=None, need_wg: bool = True):
        """Gradients for x, w and g; with ``need_wg=False`` (a weight step: α and γ frozen) the
        kernel skips the per-op reductions and w/g get zeros."""
        interp = run_mode(x)
        xc, gyc = x.contiguous(), gy.to(x.dtype).contiguous()
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        n = xc.numel()
        NC = self.K + len(self.plan.gcols)
        gg = torch.zeros(g.shape, dtype=torch.float32, device=g.device)
        if n == 0:
            return gx, torch.zeros_like(w), gg.to(g.dtype)
        _, bwd = self.kernels(interp)
        B = self.block(interp, block)
        grid = _blocks(n, B)
        part = torch.zeros((grid, max(NC, 1)) if need_wg else (1, 1), dtype=torch.float32,
                           device=x.device)
        self.launch(bwd, interp, (grid,), xc, w.contiguous(), _gvec(g, x),
                    mask.to(device=x.device, dtype=torch.int8).contiguous(), gyc, gx, part, n,
                    **_meta(interp, B, 512, NC=max(NC, 1), WG=bool(need_wg)))
        if not need_wg:
            return gx, torch.zeros_like(w), gg.to(g.dtype)
        sums = part.sum(0)
        gw = sums[: self.K].to(w.dtype).view(w.shape)
        if len(self.plan.gcols):
            gg.view(-1).index_add_(0, self._gcols_on(g.device), sums[self.K:NC].to(g.device))
        return gx, gw, gg.to(g.dtype)

    def _gcols_on(self, device):
        if self.gcols.device != device:
            self.gcols = self.gcols.to(device)
        return self.gcols


def _gvec(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if g.numel() == 0:   # Triton wants a real pointer
        return torch.zeros(1, dtype=torch.float32, device=x.device)
    return g.contiguous()


def lookup(key: str) -> tuple:
    """The (kernels, block size) a registered key names (what the custom ops run)."""
    return _REG[key]
