"""Piecewise Linear Unit, PWLU (seeds/000), with statistic-based realignment.

Formulation (seeds/000 Eq. 1-4).  ``N`` intervals split ``[BL, BR]`` uniformly
(``d = (BR − BL)/N``); the ``N + 1`` demarcation points ``B_i = BL + i·d`` carry learnable
values ``Y_i``; outside the region the function continues with learnable slopes ``KL``
(left) and ``KR`` (right)::

    (x − BL)·KL + Y_0           x < BL
    (x − B_i)·K_i + Y_i         BL ≤ x < BR,  i = floor((x − BL)/d),  K_i = (Y_{i+1} − Y_i)/d
    (x − BR)·KR + Y_N           x ≥ BR

Learnable: ``left`` (BL), ``right`` (BR), ``points`` (Y, N+1 values), ``left_slope`` (KL),
``right_slope`` (KR).  Layer-wise mode has one set of them; channel-wise mode has one set
per channel along ``channel_dim`` (shapes ``(C,)`` and ``(C, N+1)``).  Gradients follow
seeds/000 Table 1 (the interval index is treated as a constant).  ``BR − BL`` is clamped
to at least ``1e-6`` so crossed boundaries cannot produce a negative interval width.

Two evaluation paths:

* training path (used in ``train()`` mode): the formula above, differentiable in ``x``
  and all parameters;
* inference path (used in ``eval()`` mode, seeds/000 §4.3): one multiply-add
  ``x·S[idx] + O[idx]`` with ``idx = clip(floor((x − BL)/d), −1, N)`` and precomputed
  slopes ``S`` / offsets ``O`` (``S[−1] = KL``, ``O[−1] = Y_0 − BL·KL``,
  ``S[N] = KR``, ``O[N] = Y_N − BR·KR``).  It equals the training path up to rounding
  and is still differentiable.  The tables are recomputed from the parameters on every
  call (N + 2 numbers), so they can never be stale.

Learning method (seeds/000 §3.3, Figure 4):

* init: ReLU — ``KL = 0``, ``KR = 1``, ``Y_i = ReLU(B_i)``, boundaries ``[−init_bound,
  init_bound]`` (for odd N the grid is shifted so that 0 is a demarcation point, which
  keeps the init exactly ReLU).
* phase I (the first ``phase1_steps`` forward calls in training mode): the output is
  exactly ``relu(x)``, the parameters are not used (so they get no gradient and no
  optimizer update), and the running mean/std of the input are tracked with
  ``μ ← momentum·μ + (1 − momentum)·mean(x)`` (same for σ with the population std;
  per channel in channel-wise mode; buffers ``running_mean``/``running_std`` start at
  0 and 1).
* realignment (at training call number ``phase1_steps``, i.e. the first call of phase
  II): ``BL, BR = μ ∓ 3σ``, ``KL = 0``, ``KR = 1``, ``Y_i = ReLU(B_i)``.  As the paper
  notes, the function is then ReLU except inside the one interval that contains 0, where
  it is the chord of ReLU (a gap of at most d/4).
* phase II: ordinary training of all parameters.

``num_steps`` (buffer) counts training calls up to ``phase1_steps + 1`` and then stops;
the phase is part of the state dict.  ``phase1_steps=0`` disables the realignment (the
"fix-init" variant of seeds/000 Table 5: train from the ReLU init directly).

Defaults and why:

* ``num_intervals=16`` — the paper's setting for all its main results (Table 7: N in
  [8, 16] is best).
* ``phase1_steps=1000`` — the paper uses 5 epochs of ImageNet (1.4-5 % of training);
  a library cannot see epochs, so we pick 1000 optimizer steps: with momentum 0.9 the
  statistics forget their initial values after ~50 steps (0.9**50 ≈ 0.5 %), and 1000
  steps gives the preceding layers time to settle while being ~5 % of a typical
  20k-step CIFAR-scale run.  Set it to ~5 % of your total steps.
* ``momentum=0.9`` — seeds/000 Eq. 5.
* ``init_bound=3.0`` — the boundaries used before realignment (or always, with
  ``phase1_steps=0``); 3 is the best fix-init value for channel-wise PWLU in Table 5/6
  and matches the 3-sigma rule for unit-variance inputs.

In eager mode each phase-I training call reads the step counter on the host (one device
sync per call, during phase I only); from the realignment on, no call syncs.

``torch.compile(fullgraph=True)``: the phase logic has a tensor-only form (no ``.item()``,
no data-dependent Python branch) used while tracing; it gives the same outputs, the
same statistics and the same realignment, except that in phase I the parameters get
zero gradients instead of none.  The Python-side cache of the phase is refreshed by
``train()``/``eval()``/``load_state_dict``, so a compiled model switches to the plain
phase-II graph (one recompilation) at the next ``model.train()`` after realignment.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from grafs.errors import GrafsError

__all__ = ["PWLU", "pwlu", "pwlu_inference", "pwlu_tables"]

_MIN_WIDTH = 1e-6
_MIN_STD = 1e-4


def _expand_params(x, params, channel_dim):
    """Reshape per-channel (C,) tensors to broadcast against x along channel_dim."""
    if channel_dim is None:
        return params
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return [p.reshape(shape) for p in params]


def _row_offsets(x, num_rows, stride, channel_dim):
    shape = [1] * x.dim()
    shape[channel_dim] = num_rows
    return (torch.arange(num_rows, device=x.device) * stride).reshape(shape)


def _index(x, left, width, n, channel_dim):
    """Extended interval index j = clip(floor((x − BL)/d), −1, N) + 1 ∈ [0, N+1] (long)."""
    bl, w = _expand_params(x, [left, width], channel_dim)
    t = (x - bl) * (n / w)
    t = torch.nan_to_num(t, nan=0.0)  # NaN inputs still give NaN outputs, via x
    j = torch.floor(t).clamp(-1, n).to(torch.long) + 1
    if channel_dim is not None:
        j = j + _row_offsets(x, left.shape[0], n + 2, channel_dim)
    return j


class _Lookup(torch.autograd.Function):
    """``table.flatten()[j]``: a ``take`` forward and a ``scatter_add`` backward (on CPU
    both are several times faster than advanced indexing, whose backward is an
    accumulating ``index_put``)."""

    @staticmethod
    def forward(ctx, table, j):
        ctx.save_for_backward(j)
        ctx.table_shape = table.shape
        return torch.take(table, j)

    @staticmethod
    def backward(ctx, grad):
        (j,) = ctx.saved_tensors
        numel = 1
        for s in ctx.table_shape:
            numel *= s
        flat = grad.new_zeros(numel).scatter_add_(0, j.reshape(-1), grad.reshape(-1))
        return flat.reshape(ctx.table_shape), None


def _lookup(table, j):
    return _Lookup.apply(table, j)


def pwlu_tables(left, right, points, left_slope, right_slope):
    """Per-row tables of the N+2 pieces (index −1..N shifted to 0..N+1).

    Returns ``(anchor, slope, value)`` with the piece ``j`` being
    ``(x − anchor[j])·slope[j] + value[j]``; shapes ``(..., N+2)``.
    """
    n = points.shape[-1] - 1
    width = (right - left).clamp_min(_MIN_WIDTH)
    d = (width / n).unsqueeze(-1)
    bl = left.unsqueeze(-1)
    grid = bl + torch.arange(n, device=points.device, dtype=points.dtype) * d  # B_0..B_{N-1}
    anchor = torch.cat([bl, grid, right.unsqueeze(-1)], dim=-1)
    inner = (points[..., 1:] - points[..., :-1]) / d
    slope = torch.cat([left_slope.unsqueeze(-1), inner, right_slope.unsqueeze(-1)], dim=-1)
    value = torch.cat([points[..., :1], points[..., :-1], points[..., -1:]], dim=-1)
    return anchor, slope, value


def _normalize_channel_dim(x, channel_dim, num_rows):
    if channel_dim is None:
        return None
    cd = channel_dim if channel_dim >= 0 else channel_dim + x.dim()
    if not 0 <= cd < x.dim():
        raise GrafsError(
            f"PWLU: channel_dim={channel_dim} is out of range for an input with {x.dim()} dims")
    if x.shape[cd] != num_rows:
        raise GrafsError(
            f"PWLU: input has {x.shape[cd]} channels along dim {channel_dim}, "
            f"the module was built for num_channels={num_rows}")
    return cd


def _segments(x, left, right, points, left_slope, right_slope, channel_dim):
    """What both paths need: x in the compute dtype, its segment index j, and the tables."""
    cdt = torch.promote_types(x.dtype, points.dtype)
    cd = _normalize_channel_dim(x, channel_dim, points.shape[0] if points.dim() > 1 else 1)
    xc = x.to(cdt)
    n = points.shape[-1] - 1
    anchor, slope, value = pwlu_tables(left.to(cdt), right.to(cdt), points.to(cdt),
                                       left_slope.to(cdt), right_slope.to(cdt))
    j = _index(xc, left.to(cdt), (right - left).to(cdt).clamp_min(_MIN_WIDTH), n, cd)
    return xc, j, anchor, slope, value


def pwlu(x, left, right, points, left_slope, right_slope, channel_dim=None):
    """PWLU training path (seeds/000 Eq. 1).  Per-channel when ``channel_dim`` is given."""
    xc, j, anchor, slope, value = _segments(x, left, right, points, left_slope, right_slope,
                                            channel_dim)
    out = (xc - _lookup(anchor, j)) * _lookup(slope, j) + _lookup(value, j)
    return out.to(x.dtype)


def pwlu_inference(x, left, right, points, left_slope, right_slope, channel_dim=None):
    """PWLU inference path ``x·S[idx] + O[idx]`` (seeds/000 §4.3)."""
    xc, j, anchor, slope, value = _segments(x, left, right, points, left_slope, right_slope,
                                            channel_dim)
    offset = value - anchor * slope
    out = xc * _lookup(slope, j) + _lookup(offset, j)
    return out.to(x.dtype)


class PWLU(nn.Module):
    """Piecewise Linear Unit with two-phase statistic-based realignment (see module doc).

    Args:
        num_intervals: N, the number of intervals in [BL, BR] (≥ 1), default 16.
        mode: ``"layer"`` (one function) or ``"channel"`` (one per channel).
        num_channels: number of channels C (required for ``mode="channel"``).
        channel_dim: the input dimension holding the channels (default 1, e.g. NCHW/NCL
            and (N, C)); negative values count from the end.
        phase1_steps: T′, training forward calls spent in phase I (default 1000; 0
            disables the realignment).
        momentum: running-statistics momentum, ``μ ← momentum·μ + (1−momentum)·mean``
            (default 0.9, seeds/000 Eq. 5).
        init_bound: the ReLU init uses boundaries ``[−init_bound, init_bound]``
            (default 3.0).
        realign_sigmas: k of the k-sigma rule at realignment (default 3.0).
    """

    def __init__(self, num_intervals: int = 16, mode: str = "layer",
                 num_channels: int | None = None, channel_dim: int = 1,
                 phase1_steps: int = 1000, momentum: float = 0.9, init_bound: float = 3.0,
                 realign_sigmas: float = 3.0, device=None, dtype=None):
        super().__init__()
        if isinstance(num_intervals, bool) or not isinstance(num_intervals, int) or num_intervals < 1:
            raise GrafsError(f"PWLU: num_intervals must be an int ≥ 1, got {num_intervals!r}")
        if mode not in ("layer", "channel"):
            raise GrafsError(f"PWLU: mode must be 'layer' or 'channel', got {mode!r}")
        if mode == "channel":
            if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
                raise GrafsError(
                    f"PWLU: mode='channel' needs num_channels, an int ≥ 1, got {num_channels!r}")
        elif num_channels is not None:
            raise GrafsError("PWLU: num_channels is only used with mode='channel'")
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise GrafsError(f"PWLU: channel_dim must be an int, got {channel_dim!r}")
        if isinstance(phase1_steps, bool) or not isinstance(phase1_steps, int) or phase1_steps < 0:
            raise GrafsError(f"PWLU: phase1_steps must be an int ≥ 0, got {phase1_steps!r}")
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise GrafsError(f"PWLU: momentum must be in [0, 1), got {momentum!r}")
        for name, v in (("init_bound", init_bound), ("realign_sigmas", realign_sigmas)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise GrafsError(f"PWLU: {name} must be a finite number > 0, got {v!r}")

        self.num_intervals = num_intervals
        self.mode = mode
        self.num_channels = num_channels if mode == "channel" else None
        self.channel_dim = channel_dim
        self.phase1_steps = phase1_steps
        self.momentum = float(momentum)
        self.init_bound = float(init_bound)
        self.realign_sigmas = float(realign_sigmas)

        factory = {"device": device, "dtype": dtype if dtype is not None else torch.float32}
        pshape = (num_channels,) if mode == "channel" else ()
        n = num_intervals
        self.left = nn.Parameter(torch.empty(pshape, **factory))
        self.right = nn.Parameter(torch.empty(pshape, **factory))
        self.points = nn.Parameter(torch.empty(pshape + (n + 1,), **factory))
        self.left_slope = nn.Parameter(torch.empty(pshape, **factory))
        self.right_slope = nn.Parameter(torch.empty(pshape, **factory))
        stat = {"device": device, "dtype": torch.float32}
        self.register_buffer("running_mean", torch.zeros(pshape, **stat))
        self.register_buffer("running_std", torch.ones(pshape, **stat))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long, device=device))
        self._realigned = phase1_steps == 0  # host-side cache of num_steps > phase1_steps
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ReLU init on ``[−init_bound, init_bound]`` (0 is always a grid point)."""
        n = self.num_intervals
        n_left = n // 2
        d = self.init_bound / max(n_left, 1)
        self._set_relu(torch.full_like(self.left, -n_left * d),
                       torch.full_like(self.right, (n - n_left) * d))

    @torch.no_grad()
    def _set_relu(self, left, right) -> None:
        n = self.num_intervals
        steps = torch.arange(n + 1, device=left.device, dtype=left.dtype)
        grid = left.unsqueeze(-1) + steps * ((right - left) / n).unsqueeze(-1)
        self.left.copy_(left)
        self.right.copy_(right)
        self.points.copy_(torch.relu(grid))
        self.left_slope.zero_()
        self.right_slope.fill_(1.0)

    def _realigned_bounds(self):
        std = self.running_std.clamp_min(_MIN_STD)
        half = self.realign_sigmas * std
        return self.running_mean - half, self.running_mean + half

    @torch.no_grad()
    def realign(self) -> None:
        """Phase-I → II reset: BL, BR = μ ∓ kσ, KL = 0, KR = 1, Y_i = ReLU(B_i)."""
        left, right = self._realigned_bounds()
        self._set_relu(left.to(self.left.dtype), right.to(self.right.dtype))

    @property
    def phase(self) -> int:
        """1 while collecting statistics, 2 after realignment (reads the buffer)."""
        if self.phase1_steps == 0:
            return 2
        return 1 if int(self.num_steps) <= self.phase1_steps else 2

    def _sync_phase(self) -> None:
        self._realigned = self.phase1_steps == 0 or int(self.num_steps) > self.phase1_steps

    def train(self, mode: bool = True):
        out = super().train(mode)
        self._sync_phase()
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._sync_phase()

    # ------------------------------------------------------------------ statistics
    def _batch_stats(self, x):
        xf = x.detach().float()
        if self.mode == "channel":
            cd = _normalize_channel_dim(x, self.channel_dim, self.num_channels)
            dims = [i for i in range(x.dim()) if i != cd]
            std, mean = torch.std_mean(xf, dim=dims, correction=0)
        else:
            std, mean = torch.std_mean(xf, correction=0)
        return mean, std

    # ------------------------------------------------------------------ forward
    def _params(self):
        return self.left, self.right, self.points, self.left_slope, self.right_slope

    def _cd(self):
        return self.channel_dim if self.mode == "channel" else None

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        """The training path with the current parameters (no phase logic)."""
        return pwlu(x, *self._params(), channel_dim=self._cd())

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The x·S[idx] + O[idx] path with the current parameters (no phase logic)."""
        return pwlu_inference(x, *self._params(), channel_dim=self._cd())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._realigned:
            if not self.training:
                return torch.relu(x)  # still in phase I: the function is ReLU
            if torch.compiler.is_compiling():
                return self._phase1_forward_traced(x)
            return self._phase1_forward_eager(x)
        if self.training:
            return self.forward_train(x)
        return self.forward_inference(x)

    def _phase1_forward_eager(self, x):
        step = int(self.num_steps)
        t1 = self.phase1_steps
        if step < t1:
            with torch.no_grad():
                mean, std = self._batch_stats(x)
                m = self.momentum
                self.running_mean.mul_(m).add_(mean, alpha=1.0 - m)
                self.running_std.mul_(m).add_(std, alpha=1.0 - m)
                self.num_steps.add_(1)
            return torch.relu(x)
        if step == t1:
            self.realign()
            with torch.no_grad():
                self.num_steps.add_(1)
        self._realigned = True
        return self.forward_train(x)

    def _phase1_forward_traced(self, x):
        # Same semantics as the eager version, without host reads or Python branches on data.
        t1 = self.phase1_steps
        step = self.num_steps
        in_phase1 = step < t1
        at_reset = step == t1
        with torch.no_grad():
            mean, std = self._batch_stats(x)
            m = self.momentum
            new_mean = torch.where(in_phase1, self.running_mean * m + mean * (1.0 - m), self.running_mean)
            new_std = torch.where(in_phase1, self.running_std * m + std * (1.0 - m), self.running_std)
            self.running_mean.copy_(new_mean)
            self.running_std.copy_(new_std)
            n = self.num_intervals
            half = self.realign_sigmas * new_std.clamp_min(_MIN_STD)
            left = (new_mean - half).to(self.left.dtype)
            right = (new_mean + half).to(self.right.dtype)
            grid = left.unsqueeze(-1) + torch.arange(n + 1, device=x.device, dtype=left.dtype) * (
                (right - left) / n).unsqueeze(-1)
            self.left.copy_(torch.where(at_reset, left, self.left))
            self.right.copy_(torch.where(at_reset, right, self.right))
            self.points.copy_(torch.where(at_reset, torch.relu(grid), self.points))
            self.left_slope.copy_(torch.where(at_reset, torch.zeros_like(self.left_slope), self.left_slope))
            self.right_slope.copy_(torch.where(at_reset, torch.ones_like(self.right_slope), self.right_slope))
            self.num_steps.copy_(torch.where(step <= t1, step + 1, step))
        return torch.where(in_phase1, torch.relu(x), self.forward_train(x))

    def extra_repr(self) -> str:
        s = f"num_intervals={self.num_intervals}, mode={self.mode!r}"
        if self.mode == "channel":
            s += f", num_channels={self.num_channels}, channel_dim={self.channel_dim}"
        return s + f", phase1_steps={self.phase1_steps}, momentum={self.momentum}"
