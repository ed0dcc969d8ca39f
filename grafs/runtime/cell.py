"""The relaxed DrNAS cell: the module that replaces a network's activations during a search.

Every hole (edge or vertex) holds DrNAS concentration parameters α (concentration elu(α)+1,
init ≈ 0, i.e. uniform) and its ops' learnable γ. Each call draws an independent
``Dirichlet.rsample`` of the mixture weights over the ops still active at each hole, so one cell
object can serve every activation site of a network (shared α and γ, independent samples).

Modes (``"auto"``, the default, is what a search should use; bench/cell.py and
bench/search_step.py measure the others side by side):
  ``"lean"``: the eager path of grafs.compiler.cell.lean: each distinct op evaluated once per
      call, affine ops folded into one mixing matmul per group of holes, no compile; saves only
      x for backward on large activations (recompute). ``auto`` on CPUs without the C cell and
      for spaces with trainable-family ops.
  ``"c"``: grafs' generated C kernel pair for the active set (SIMD vectors, glibc's vector
      math; grafs.compiler.cell.c_kernels): one call per forward and per backward (a weight call:
      one pass, y and dy/dx), saves only x (or dy/dx in its place), builds
      in about a second per active set. Like lean it computes in fp32 whatever x's dtype
      (float64 inputs included; ``eager`` is the float64 reference). ``auto`` on x86-64 Linux CPUs with a C compiler.
  ``"triton"``: grafs' generated Triton kernel pair for the active set (dropped ops have no code
      once the set falls to 60% of the compiled one; until then a mask skips them). ``auto`` on
      CUDA. CPU only under TRITON_INTERPRET=1 (grafs.compiler.triton.backend.TritonCell).
  ``"eager"``: the reference: the cell program interpreted op by op under autograd. The
      semantics every other mode is tested against.
  ``"fused"``, ``"compile"``: baselines kept for the benches: Inductor-compiled cell code (one
      compile per active set, tens of seconds on a small CPU, 30-80 s on a GPU host), with a
      recompute-in-backward Function (fused) or plain AOTAutograd (compile). Never faster than
      ``auto`` in bench/search_step.py, so a search does not pick them.

Code per active set (grafs.runtime.cell_code): the fused and Triton modes keep their code after
a drop until the active count falls to ``recompile_ratio`` (0.6) of the compiled count, so a
110→6 search generates code about six times; the C mode compiles exactly each new active set in
a background thread while its current build serves, so a search waits only for its first build.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from grafs.compiler.cell.lower import (CellKernels, cell_program, discretized_expr, fused_apply)
from grafs.compiler.eager import run_program
from grafs.compiler.cell.lean import LeanPlan, lean_apply
from grafs.errors import GrafsError
from grafs.ops import OPS, SEARCH_OPS
from grafs.runtime.cell_code import CompiledCellCode
from grafs.runtime.sampling import segmented_dirichlet

MODES = ("auto", "c", "lean", "eager", "triton", "fused", "compile")


@dataclass
class _ActiveIndex:
    """What the per-call path needs of the active mask, built once per mask and device."""
    ops: tuple[tuple[str, ...], ...]    # active ops per hole
    device: torch.device
    slots: torch.Tensor                 # active slot numbers, hole by hole
    seg: torch.Tensor                   # the hole of each active slot
    single: torch.Tensor                # the slot is its hole's only active op
    mask_i8: torch.Tensor               # the mask as the Triton kernels read it
    unit_weights: torch.Tensor          # the weights of a discrete cell (1 at active slots)
    unit_scaled: torch.Tensor           # the same times the op-normalisation constants, if any
    n_active: int                       # active ops in all holes
    batched: dict = field(default_factory=dict)   # n -> index tensors for n samples at once


class RelaxedCell(CompiledCellCode, nn.Module):

    def __init__(self, space, mode: str = "auto", seed: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise GrafsError(f"unknown cell mode {mode!r}; choose one of {', '.join(MODES)}")
        self.space = space
        self.mode = mode
        self.clip = space.clip
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.slot_of: dict[tuple[int, str], int] = {}
        self.gamma_of: dict[tuple[int, str], list[int]] = {}
        inits: list[float] = []
        for h in space.holes:
            for op_name in h.ops:
                self.slot_of[(h.index, op_name)] = len(self.slot_of)
                idx = []
                for gi in SEARCH_OPS[op_name].gammas:
                    v = gi.mean + (gi.std * torch.randn((), generator=gen).item() if gi.std else 0.0)
                    idx.append(len(inits))
                    inits.append(v)
                self.gamma_of[(h.index, op_name)] = idx
        # α ≈ 0: tiny random values (as the reference) so ties in DropOps are broken by the seed
        self.alpha = nn.ParameterList(
            [nn.Parameter(torch.rand(len(h.ops), generator=gen) * 1e-6) for h in space.holes])
        self.gamma = nn.Parameter(torch.tensor(inits, dtype=torch.float32))
        self.register_buffer("active", torch.ones(len(self.slot_of), dtype=torch.bool))
        # normalize=True: fixed per-op constants multiply the mixture weights (runtime/normalize)
        from grafs.runtime.normalize import slot_scales
        self.register_buffer("scale", slot_scales(space, self.slot_of)
                             if getattr(space, "normalize", False) else None, persistent=False)
        self._reset_caches()
        # candidate ops from the trainable families carry modules (network weights, not arch params)
        full = self._program(self.active_ops(), self.clip)
        self.terms = nn.ModuleDict({i.key: OPS[i.op].module() for i in full.instrs if i.key is not None})
        if len(self.terms) and mode not in ("eager", "lean", "auto"):
            raise GrafsError(f"search spaces with trainable-family ops ({', '.join(self.terms)}) "
                             f"need mode 'auto', 'lean' or 'eager', not {mode!r}")
        self.prepare()

    def _reset_caches(self) -> None:
        """Everything derived from the parameters and the mask that is rebuilt on demand."""
        self._kernels: dict[tuple, CellKernels] = {}
        self._compiled_key: tuple | None = None
        self._programs: dict[tuple, object] = {}
        self._index_cache = None
        self._lean_plans: dict[tuple, LeanPlan] = {}
        self._pool: list[torch.Tensor] = []
        # Triton and C kernels per generated active set (see _code_key, _c_cell_for): a Triton
        # 110 -> 6 search generates about six, each a few seconds of compile at most
        self._generated: dict[tuple, object] = {}
        self._generated_key: dict[str, tuple | None] = {"triton": None, "c": None}
        self._generated_last: dict[str, tuple | None] = {"triton": None, "c": None}
        self._c_pending = None      # the C cell compiling in the background

    def __getstate__(self):
        """Without the compiled code and other caches (loaded libraries, a pending build and
        compiled functions cannot be copied; they are rebuilt on the next call): a model
        under search can be deep-copied or pickled."""
        live = dict(self.__dict__)
        self._reset_caches()
        state = dict(self.__dict__)
        self.__dict__.update(live)      # this cell keeps its caches
        return state

    # -- bookkeeping ---------------------------------------------------------------------
    def _slots(self, h) -> list[int]:
        return [self.slot_of[(h.index, o)] for o in h.ops]

    def _active_index(self) -> "_ActiveIndex":
        """Index tensors of the current mask, on the mask's device.

        The mask only changes in drop() and load_state_dict, so this is cached: the per-call
        path (sampling, program lookup) then builds no index tensors and never syncs a device."""
        dev = self.active.device
        idx = self._index_cache
        if idx is None or idx.device != dev:
            self._lean_plans = {}
            self._pool = []
            act = self.active.tolist()
            ops = tuple(tuple(o for o in h.ops if act[self.slot_of[(h.index, o)]])
                        for h in self.space.holes)
            flat = [(i, self.slot_of[(h.index, o)], len(hole_ops) == 1)
                    for i, (h, hole_ops) in enumerate(zip(self.space.holes, ops)) for o in hole_ops]
            unit = self.active.to(self.gamma.dtype)
            idx = self._index_cache = _ActiveIndex(
                ops=ops, device=dev,
                slots=torch.tensor([k for _, k, _ in flat], device=dev),
                seg=torch.tensor([i for i, _, _ in flat], device=dev),
                single=torch.tensor([s for _, _, s in flat], device=dev),
                mask_i8=self.active.to(torch.int8).contiguous(),
                unit_weights=unit,
                unit_scaled=unit if self.scale is None else unit * self.scale,
                n_active=len(flat))
        return idx

    def _load_from_state_dict(self, *args, **kwargs):
        self._index_cache = None  # the loaded mask may differ
        super()._load_from_state_dict(*args, **kwargs)

    def active_ops(self) -> tuple[tuple[str, ...], ...]:
        return self._active_index().ops

    def num_active(self) -> int:
        return self._active_index().n_active  # cached: no device sync

    @property
    def num_holes(self) -> int:
        return len(self.space.holes)

    def is_discrete(self) -> bool:
        return self.num_active() == self.num_holes

    def arch_parameters(self):
        """α of every hole and all γ: what the architecture optimizer trains."""
        yield from self.alpha
        yield self.gamma

    def gamma_values(self, hole_index: int, op_name: str) -> list[float]:
        return [float(self.gamma.detach()[j]) for j in self.gamma_of[(hole_index, op_name)]]

    # -- sampling --------------------------------------------------------------------------
    def sample_weights(self, n: int | None = None) -> torch.Tensor:
        """One independent Dirichlet rsample per hole over its active ops, scattered into the
        full slot vector (zeros for dropped ops); differentiable w.r.t. α. All holes are drawn
        together (grafs.runtime.sampling): a few kernels and no device synchronisation. With
        ``n``, n independent samples at once, as an (n, slots) tensor."""
        idx = self._active_index()
        slots, dev, seg, single = idx.slots, idx.device, idx.seg, idx.single
        alpha = torch.cat(list(self.alpha)) if len(self.alpha) > 1 else self.alpha[0]
        conc = F.elu(alpha.index_select(0, slots)) + 1.0
        K, H = len(self.slot_of), self.num_holes
        if n is None:
            s = segmented_dirichlet(conc, seg, H, single)
            return torch.zeros(K, dtype=s.dtype, device=dev).index_put((slots,), s)
        seg_n, single_n, slots_n = self._batched_index(n)
        s = segmented_dirichlet(conc.repeat(n), seg_n, n * H, single_n)
        return torch.zeros(n * K, dtype=s.dtype, device=dev).index_put((slots_n,), s).view(n, K)

    def _batched_index(self, n: int):
        idx = self._index_cache
        if n not in idx.batched:
            rows = torch.arange(n, device=idx.device)[:, None]
            idx.batched[n] = ((idx.seg + self.num_holes * rows).reshape(-1), idx.single.repeat(n),
                              (idx.slots + len(self.slot_of) * rows).reshape(-1))
        return idx.batched[n]

    def refresh_samples(self, n: int) -> None:
        """Draw the mixture weights of the next ``n`` calls in one batch (each call still gets
        its own independent sample; the search draws one batch per forward pass, one sample per
        activation site, instead of a few kernels at every site). Calls beyond ``n`` sample
        for themselves. The batch is multiplied by the op-normalisation constants here, once
        (the same products, bit for bit, as each call's own multiplication)."""
        if self.is_discrete():
            self._pool = []
            return
        w = self.sample_weights(n)
        self._pool = list((w if self.scale is None else w * self.scale).unbind(0))

    def clear_samples(self) -> None:
        """Forget undrawn batched samples (their graph belongs to the pass that drew them)."""
        self._pool = []

    # -- evaluation ------------------------------------------------------------------------
    def _program(self, key, clip: bool, unit: bool = False):
        pk = (key, clip, unit)
        if pk not in self._programs:
            self._programs[pk] = cell_program(self.space, key, self.slot_of, self.gamma_of, clip,
                                              unit)
        return self._programs[pk]

    # auto on the CPU, from bench/search_step.py (mnist1d, one thread): lean is 1.6x faster than
    # eager at 110 ops, even at 24, and 1.2x slower at 6 (fewer, simpler ops: eager dispatches
    # 22 forward ops per call there, lean 56). Large activations always take lean, whose
    # recompute-in-backward saves 1x the input where eager saves one tensor per op.
    eager_up_to_ops_per_hole = 2

    def mode_for(self, device: torch.device, numel: int = 0) -> str:
        """The mode a call on ``device`` runs: ``auto`` is the Triton cell on CUDA (where Triton
        is installed and the space has no trainable-family ops); elsewhere the lean path, or the
        reference interpreter for a small input once few ops are left."""
        if self.mode != "auto":
            return self.mode
        if device.type == "cuda" and not len(self.terms) and _has_triton():
            return "triton"
        if device.type == "cpu" and not len(self.terms) and not torch.compiler.is_compiling() \
                and _has_c():
            return "c"      # (forward() takes lean where x is a torch.func-transformed tensor)
        from grafs.compiler.cell.lean import RECOMPUTE_FROM
        few = self.num_active() <= self.eager_up_to_ops_per_hole * self.num_holes
        return "eager" if few and 0 < numel < RECOMPUTE_FROM else "lean"

    def _lean_plan(self, key) -> LeanPlan:
        plan = self._lean_plans.get(key)
        if plan is None:
            plan = self._lean_plans[key] = LeanPlan(self.space, key, self.slot_of, self.gamma_of,
                                                    self.gamma.numel())
        return plan

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        idx = self._active_index()
        key = idx.ops
        mode = self.mode_for(x.device, x.numel())
        if mode == "c" and self.mode == "auto" and _functorch_wrapped(x):
            mode = "lean"   # vmap/jacrev/grad of torch.func need differentiable torch ops
        scale = self.scale
        if weights is None and idx.n_active == len(idx.ops):
            # one op per hole: every Dirichlet sample is exactly 1 (gradient 0), so nothing is
            # drawn and α gets no gradient; the reference path then skips the weights entirely
            if mode == "eager" and not len(self.terms) and scale is None:
                return run_program(self._program(key, self.clip, unit=True), x, {},
                                   {"g": self.gamma}, self.terms)
            w = idx.unit_scaled
        elif weights is None and self._pool:
            w = self._pool.pop()                # (scaled when drawn)
        else:
            w = self.sample_weights() if weights is None else weights
            if scale is not None:
                w = w * scale
        if mode == "lean":
            return lean_apply(self._lean_plan(key), x, w, self.gamma, self.terms if len(self.terms) else None)
        if mode == "eager":
            return run_program(self._program(key, self.clip), x, {}, {"w": w, "g": self.gamma},
                               self.terms)
        if mode in ("triton", "c"):
            return self._generated_for(mode, key)(x, w, self.gamma, idx.mask_i8)
        k = self._kernels_for(key)
        if mode == "compile":
            return k.fwd(x.reshape(-1), w, self.gamma).view(x.shape)
        return fused_apply(k, x, w, self.gamma)

    def forward_unclipped(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The eager cell without bounded-op clipping (how a found formula is evaluated)."""
        w = self.sample_weights() if weights is None else weights
        if self.scale is not None:
            w = w * self.scale
        return run_program(self._program(self.active_ops(), False), x, {}, {"w": w, "g": self.gamma},
                           self.terms)

    # -- shrinking and discretization ---------------------------------------------------------
    @torch.no_grad()
    def drop(self, k: int = 1) -> list[tuple[str, str]]:
        """DropOps(k): k times, the hole with most active ops (first on ties) loses its
        lowest-α active op. Returns the (hole name, op) pairs dropped, in order."""
        dropped = []
        for _ in range(int(k)):
            counts = [sum(bool(self.active[s]) for s in self._slots(h)) for h in self.space.holes]
            best = max(counts)
            if best <= 1:
                break
            hi = counts.index(best)
            h = self.space.holes[hi]
            slots = self._slots(h)
            a = self.alpha[hi].detach().clone()
            a[~self.active[torch.tensor(slots)]] = float("inf")
            j = int(a.argmin())
            self.active[slots[j]] = False
            dropped.append((h.name, h.ops[j]))
        self._index_cache = None
        self.prepare()
        return dropped

    def prepare(self) -> None:
        """Build what a call needs for the current active set (the mask's index and, in the
        eager and lean modes, the program or plan) now: built inside a torch.compile trace
        (the first call after a drop), grafs' Expr construction breaks the graph."""
        key = self.active_ops()
        if self.mode == "eager":
            self._program(key, self.clip)
            if self.is_discrete():
                self._program(key, self.clip, unit=True)
        elif self.mode == "lean":
            self._lean_plan(key)

    def chosen_ops(self, keep_x: bool = False) -> list[str]:
        """Per hole, the active op with the highest α. ``keep_x``: if that formula does not
        depend on x, the closest choice that does (grafs.runtime.discretize.choices_with_x)."""
        out = []
        for h, a in zip(self.space.holes, self.alpha):
            m = self.active[torch.tensor(self._slots(h))]
            a = a.detach().clone()
            a[~m] = -float("inf")
            out.append(h.ops[int(a.argmax())])
        from grafs.runtime.discretize import varies_with_x
        if keep_x and not varies_with_x(self._discretized(out)):
            from grafs.runtime.discretize import choices_with_x
            act = self.active.tolist()
            alt = choices_with_x(self.space, out, [a.detach().tolist() for a in self.alpha],
                                 [[act[s] for s in self._slots(h)] for h in self.space.holes],
                                 self.gamma_values,
                                 lambda c: varies_with_x(self._discretized(c)))
            out = alt or out
        return out

    def discretize(self, keep_x: bool = False, scaled: bool = True):
        """Expr of the highest-α op per hole, learned γ frozen, mix coefficients as σ(γ).
        ``keep_x``: the closest formula that depends on x if that one does not. ``scaled=False``
        (normalised spaces): without the op-normalisation constants, the bare ops."""
        return self._discretized(self.chosen_ops(keep_x), scaled)

    def _discretized(self, chosen: list[str], scaled: bool = True):
        scales = None
        if self.scale is not None and scaled:   # the op's constant stays: the function searched
            scales = [float(self.scale[self.slot_of[(h.index, op)]])
                      for h, op in zip(self.space.holes, chosen)]
        return discretized_expr(self.space, chosen, self.gamma_values, scales)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, active={self.num_active()}/{len(self.slot_of)}, clip={self.clip}"


_TRITON: list[bool] = []


def _functorch_wrapped(x: torch.Tensor) -> bool:
    try:
        return torch._C._functorch.is_functorch_wrapped_tensor(x)
    except AttributeError:   # pragma: no cover - older torch
        return False


def _has_c() -> bool:
    from grafs.compiler.cell.c_build import available
    return available()


def _has_triton() -> bool:
    if not _TRITON:
        try:
            import triton  # noqa: F401
            _TRITON.append(True)
        except ImportError:
            _TRITON.append(False)
    return _TRITON[0]
