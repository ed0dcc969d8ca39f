"""The inductor backend's per-call path: Inductor kernels called without Dynamo.

``torch.compile(fn)`` costs tens of microseconds per call on top of its kernels: Dynamo's frame
hook and guard evaluation, then AOTAutograd's runtime wrappers, at every activation site of a
network, where a native activation pays one dispatch. A formula is elementwise and its
generated function has no Python control flow, so none of that is needed per call: here the
function is traced once with symbolic size (``make_fx``) on a flat input, its forward and its
backward (``torch.func.vjp``: recomputes from x, one fused pass, parameter gradients as
reductions) are compiled by ``torch._inductor.standalone_compile`` into two artifacts with no
guards, and a call is one autograd Function around the forward artifact. Artifacts are cached
per (dtype, device) and, on a CPU, the intra-op thread count (a C++ kernel's parallelism is fixed
when it is compiled, as for ``torch.compile``, which recompiles when the count changes); autograd
saves only x and the scalar parameters.

The trace's example is small, but Inductor optimises for a large size (:data:`_SIZE_HINT`, the
hint of the symbolic size, set with ``mark_dynamic(..., hint_override=)``): it decides a CPU
kernel's parallelism (``#pragma omp parallel``) and a GPU kernel's block size from that hint, so a
hint of 16 gave serial CPU kernels for every size. The hint is part of Inductor's cache key, so
serial kernels cached by an older trace are not reused.

The artifacts assume what the call path guarantees: a contiguous 1-D input of the dtype and
device they were built for (any size, 0 included), 0-d parameters. Where the API is missing
(older torch), or the formula has trainable-family modules (whose state a trace would freeze),
:class:`InductorFormula` uses ``torch.compile(fn, fullgraph=True)`` instead.
"""
from __future__ import annotations

import contextlib
import logging
import threading

import torch

_LOCK = threading.Lock()
_TRACE_NUMEL = 16      # the example size of the symbolic trace (any size >= 2: 0/1 specialise)
_SIZE_HINT = 1 << 20   # the size Inductor optimises the kernels for (parallel CPU loops, GPU blocks)
# CPU kernels end in a scalar loop (see kernel_options); False: Inductor's masked vector tail
# (bench.formulas --masked-tail times both)
scalar_tail = True


def _standalone():
    """``(make_fx, standalone_compile)``, or None where this torch has no standalone compile."""
    try:
        from torch._inductor import standalone_compile
        from torch.fx.experimental.proxy_tensor import make_fx
    except ImportError:  # pragma: no cover - depends on the torch version
        return None
    return make_fx, standalone_compile


class InductorFormula:
    """``InductorFormula(fn, n_params)(x, params) -> y``: the generated function ``fn(x, *params)``
    compiled by Inductor, differentiable w.r.t. x and every 0-d parameter in ``params``."""

    def __init__(self, fn, n_params: int, fallback: bool = False):
        self.fn = fn
        self.n_params = n_params
        self._api = None if fallback else _standalone()
        self._fwd: dict[tuple, object] = {}
        self._bwd: dict[tuple, object] = {}
        self._compiled = None
        self.compiles = 0          # Inductor compilations of this formula (forward, backward)

    def __call__(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        if self._api is None or not x.is_floating_point():
            return self._torch_compiled()(x, *params)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _FormulaFn.apply(self, x, *params)
        return self.forward(_flat(x), params).view(x.shape)     # no autograd node to build

    def _torch_compiled(self):
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, fullgraph=True)
        return self._compiled

    # -- artifacts -------------------------------------------------------------------------------
    def _trace_inputs(self, x: torch.Tensor, params, gy: bool) -> list[torch.Tensor]:
        xs = _example(x.dtype, x.device)
        return [xs, *(p.detach() for p in params), *([_example(x.dtype, x.device)] if gy else [])]

    @staticmethod
    def _key(x1: torch.Tensor, params) -> tuple:
        threads = torch.get_num_threads() if x1.device.type == "cpu" else None
        return (x1.dtype, x1.device, params[0].dtype if params else None, threads)

    def _compile(self, table: dict, key: tuple, fn, example: list[torch.Tensor]):
        with _LOCK:
            art = table.get(key)
            if art is None:
                make_fx, standalone_compile = self._api
                gm = make_fx(fn, tracing_mode="symbolic")(*example)
                # it warns that a graph without kernels (the formula x) cannot be saved: we
                # never save artifacts
                log = logging.getLogger("torch._inductor.standalone_compile")
                level = log.level
                log.setLevel(logging.ERROR)
                try:
                    with kernel_options():
                        art = table[key] = standalone_compile(gm, example)
                finally:
                    log.setLevel(level)
                self.compiles += 1
        return art

    def forward(self, x1: torch.Tensor, params) -> torch.Tensor:
        key = self._key(x1, params)
        art = self._fwd.get(key)
        if art is None:
            art = self._compile(self._fwd, key, self.fn, self._trace_inputs(x1, params, False))
        return art(x1, *params)

    def backward(self, x1: torch.Tensor, params, gy1: torch.Tensor) -> tuple:
        key = self._key(x1, params)
        art = self._bwd.get(key)
        if art is None:
            fn = self.fn

            def vjp(x, *rest):
                *ps, gy = rest
                return torch.func.vjp(fn, x, *ps)[1](gy)
            art = self._compile(self._bwd, key, vjp, self._trace_inputs(x1, params, True))
        return art(x1, *params, gy1)


def kernel_options():
    """Inductor settings for a formula's kernels: on a CPU, the few elements past the last full
    vector in a plain scalar loop instead of a masked vector body. With a symbolic size, Inductor
    puts the masked body in the same loop as the full vectors (a branch per vector), and GCC then
    compiled the whole loop 1.5-2x slower than the static kernel of the same formula (measured:
    docs/search-cost.md, issue 30 item 1); the scalar tail leaves the main loop as the static
    one. The tail's elements (n mod 16 of them) go through scalar libm, so they may differ from
    the vector body's values by a few ulp. The setting is part of Inductor's cache key; in
    torch 2.13 the patch is thread-local (older torch: process-wide while a formula compiles,
    under this module's lock)."""
    import torch._inductor.config as inductor_config
    if not scalar_tail or not hasattr(inductor_config.cpp, "enable_loop_tail_vec"):
        return contextlib.nullcontext()
    return inductor_config.patch({"cpp.enable_loop_tail_vec": False})


def _example(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 1-D trace example of :data:`_TRACE_NUMEL` elements whose size Inductor takes to be
    :data:`_SIZE_HINT` (its values are never read: the trace is symbolic)."""
    import torch._dynamo
    x = torch.zeros(_TRACE_NUMEL, dtype=dtype, device=device)
    try:
        torch._dynamo.mark_dynamic(x, 0, hint_override=_SIZE_HINT)
    except TypeError:  # pragma: no cover - torch without hint overrides: an example that large
        x = torch.empty(_SIZE_HINT, dtype=dtype, device=device)
    return x


def _flat(x: torch.Tensor) -> torch.Tensor:
    """x as the contiguous 1-D tensor the artifacts take (a view where x is contiguous)."""
    x1 = x.reshape(-1)
    return x1 if x1.is_contiguous() else x1.contiguous()


class _FormulaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, formula: InductorFormula, x: torch.Tensor, *params: torch.Tensor):
        ctx.formula = formula
        ctx.save_for_backward(x, *params)       # (x itself: a double backward reaches it)
        return formula.forward(_flat(x), params).view(x.shape)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, *params = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty, a second derivative): the compiled backward
            # has no graph, so the gradient is the generated function's, differentiated by
            # autograd (the same values; slower, and only in this case)
            need = [x.requires_grad] + [p.requires_grad for p in params]
            ins = [t for t, n in zip([x, *params], need) if n]
            got = iter(torch.autograd.grad(ctx.formula.fn(x, *params), ins, gy,
                                           create_graph=True, allow_unused=True))
            grads = [next(got) if n else None for n in need]
            grads = [g if g is not None or not n else torch.zeros_like(t)
                     for g, n, t in zip(grads, need, [x, *params])]
        else:
            x1 = _flat(x)
            grads = list(ctx.formula.backward(x1, params, gy.reshape(-1).contiguous()))
            grads[0] = grads[0].view(x.shape)
        return (None, grads[0], *(g if need else None
                                  for g, need in zip(grads[1:], ctx.needs_input_grad[2:])))
