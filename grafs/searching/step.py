"""One GRAFS search step (arch step, then weight step) and the on-device loss meter."""
from __future__ import annotations

import torch
from torch import nn

from grafs.errors import SearchError


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float | None:
    if y.dtype in (torch.int64, torch.int32) and out.dim() >= 1 and out.shape[:-1] == y.shape:
        return float((out.argmax(-1) == y).float().mean())
    return None


def default_loss(out, y):
    if out.dim() == 3 and y.dim() == 2:  # sequence models: (B, T, V) vs (B, T)
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return nn.functional.cross_entropy(out, y)


AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def arch_optimizer(params, lr: float, betas, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over α and γ, the fused implementation where the tensors' device has it: one
    kernel for all of them, where the default loops over them in Python (on the teacher task's
    MLP, 0.4 ms of a 1 ms plain step)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                            fused=True if fused else None)


class Stepper:
    """One GRAFS training step (seeds/001 Algorithm 1): the arch step on a validation batch,
    then the weight step. Shared by :func:`search` and bench/search_step.py, so what the bench
    times is what a search runs. Nothing here reads a value back to the host (except the fp16
    GradScaler's inf check). With the weights frozen during the arch step, gradients the
    weight step accumulates over ``grad_accumulation`` steps are kept intact."""

    def __init__(self, model, cell, state, weights, arch_params, w_opt, a_opt, w_sched, loss_fn,
                 dev: torch.device, amp: str | None = None, grad_accumulation: int = 1,
                 n_sites: int | None = None, dist=None, single_level: bool = False):
        self.model, self.cell, self.state = model, cell, state
        self.single_level = single_level
        self.dist = dist  # grafs.searching.distributed.Dist: gradients averaged over the ranks
        self.weights, self.arch_params = weights, arch_params
        self.w_opt, self.a_opt, self.w_sched = w_opt, a_opt, w_sched
        self.loss_fn, self.dev = loss_fn, dev
        self.amp = AMP_DTYPES[amp]
        self.grad_accumulation = grad_accumulation
        # the cell draws one batch of samples per pass, one per site (see refresh_samples)
        self.n_sites = n_sites if n_sites and hasattr(cell, "refresh_samples") else None
        fp16 = self.amp is torch.float16
        # fp16 needs loss scaling; one scaler per optimizer (their steps are independent)
        self.w_scaler = torch.amp.GradScaler(dev.type, enabled=fp16)
        self.a_scaler = torch.amp.GradScaler(dev.type, enabled=fp16)

    def _autocast(self):
        import contextlib
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dev.type, dtype=self.amp)

    def _to(self, t):
        return t if t.device == self.dev else t.to(self.dev, non_blocking=True)

    def step(self, xb, yb, xv, yv, warm: bool, update: bool = True, more_val=()):
        """Returns the weight step's (output, loss), both still on the device. ``more_val``:
        further (inputs, targets) validation batches, one more arch step each before the
        weight step (``search(arch_steps=...)``). With ``single_level`` (and not ``warm``),
        one joint step on the training batch instead (``xv``, ``yv`` unused)."""
        xb, yb = self._to(xb), self._to(yb)
        if self.single_level and not warm:
            out, loss = self._train_pass(xb, yb, use_cell=True, joint=True, update=update)
            self.last_vloss = loss      # the loss α trained on
            return out, loss
        for xa, ya in [(xv, yv), *more_val]:
            vloss = self._arch_step(self._to(xa), self._to(ya))
        self.last_vloss = vloss.detach()
        # 2. weight step (original activation while warm-starting)
        return self._train_pass(xb, yb, use_cell=not warm, joint=False, update=update)

    def _train_pass(self, xb, yb, use_cell: bool, joint: bool, update: bool):
        """Forward/backward on a training batch and (``update``) the weight optimizer's step.
        Bilevel (``joint=False``): α and γ are frozen, so backward does not differentiate
        through the Dirichlet sample for nothing. Single-level (``joint=True``): the same pass
        also gives α/γ their gradients and the arch optimizer steps with the weights' (half
        the passes of the bilevel step; α then fits the training batches, as in single-level
        DARTS variants)."""
        self.state["use_cell"] = use_cell
        frozen = [] if joint else self.arch_params
        for p in frozen:
            p.requires_grad_(False)
        try:
            if self.n_sites:
                self.cell.clear_samples()
                if use_cell:
                    self.cell.refresh_samples(self.n_sites)
            with self._autocast():
                out = self.model(xb)
                loss = self.loss_fn(out, yb)
            self.w_scaler.scale(loss / self.grad_accumulation).backward()
        finally:
            for p in frozen:
                p.requires_grad_(True)
            if self.n_sites:
                self.cell.clear_samples()
        if update:
            self._apply(self.w_scaler, self.w_opt, self.weights,
                        also=[self.a_opt] if joint else [])
            if self.w_sched is not None:
                self.w_sched.step()
        return out.detach(), loss.detach()

    def _arch_step(self, xv, yv):
        """1. arch step on a validation batch (fresh Dirichlet samples at every call)."""
        model, state = self.model, self.state
        state["use_cell"] = True
        self.a_opt.zero_grad(set_to_none=True)
        if self.n_sites:
            self.cell.refresh_samples(self.n_sites)
        # the network's weights are frozen for the arch step: backward then computes no weight
        # gradients at all (the reference computes and discards them), and none can leak into
        # the weight update (the reference forgets to zero them in two of its three copies)
        frozen = [p for p in self.weights if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with self._autocast():
                vloss = self.loss_fn(model(xv), yv)
            # a discrete cell without γ ops has nothing left to learn (its samples are constant)
            learns = vloss.requires_grad
            if learns:
                self.a_scaler.scale(vloss).backward()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        if learns:
            self._apply(self.a_scaler, self.a_opt, self.arch_params)
        return vloss

    def _apply(self, scaler, opt, params, also=()) -> None:
        """One optimizer step on gradients averaged over the ranks (data-parallel search);
        ``also``: further optimizers whose gradients came from the same scaled loss (the
        single-level step's arch optimizer) and step with it."""
        groups = [params] + [[p for g in o.param_groups for p in g["params"]] for o in also]
        if self.dist is not None:
            for ps in groups:
                self.dist.average_grads(ps)
        scaler.step(opt)
        for o, ps in zip(also, groups[1:]):
            # (a discrete cell without γ ops has no arch gradients left)
            if any(p.grad is not None for p in ps):
                scaler.step(o)
        scaler.update()
        for o in (opt, *also):
            o.zero_grad(set_to_none=True)


class Meter:
    """Per-epoch loss and accuracy sums kept on the device; :meth:`check` syncs once per
    window of steps to detect a non-finite loss (and report the first bad step)."""

    def __init__(self, dev):
        self.dev = dev
        self.loss = torch.zeros((), dtype=torch.float64, device=dev)
        self.acc = torch.zeros((), dtype=torch.float64, device=dev)
        self.n = self.nacc = 0
        self.window: list = []      # (step, kind, loss) since the last check
        self.step = 0
        self.last = float("nan")

    def add(self, loss, out, y, vloss=None):
        n = len(y)
        self.loss += loss.double() * n
        self.n += n
        if y.dtype in (torch.int64, torch.int32) and out.dim() >= 1 and out.shape[:-1] == y.shape:
            self.acc += (out.argmax(-1) == y).double().mean() * n
            self.nacc += n
        self.window.append((self.step, "training", loss))
        if vloss is not None:
            self.window.append((self.step, "validation", vloss))
        self.step += 1

    def check(self, epoch, cell, ckpt_path, dist=None) -> None:
        if not self.window:
            return
        vals = torch.stack([v.float().reshape(()) for _, _, v in self.window]).cpu()
        bad = (~torch.isfinite(vals)).nonzero()
        if dist is not None:  # a non-finite loss on any rank stops every rank
            dist.stop_if_peer_failed(len(bad) > 0, epoch, ckpt_path)
        if len(bad):
            step, kind, _ = self.window[int(bad[0])]
            _raise_non_finite(float(vals[int(bad[0])]), kind, epoch, step, cell, ckpt_path)
        self.last = float(vals[-1] if self.window[-1][1] == "training" else vals[-2])
        self.window.clear()

    def totals(self) -> dict:
        return {"loss": float(self.loss), "acc": float(self.acc), "n": self.n, "nacc": self.nacc}


def _leading(cell) -> str:
    try:
        return str(cell.discretize())
    except Exception:  # pragma: no cover - only for error messages
        return "?"


def check_finite(loss, kind, epoch, step, cell, ckpt_path) -> None:
    if not torch.isfinite(loss):
        _raise_non_finite(float(loss), kind, epoch, step, cell, ckpt_path)


def _raise_non_finite(value, kind, epoch, step, cell, ckpt_path) -> None:
    where = f"; the last good checkpoint is {ckpt_path}" if ckpt_path is not None and ckpt_path.exists() else ""
    raise SearchError(f"non-finite {kind} loss ({value}) at epoch {epoch + 1}, step {step + 1}; "
                      f"leading formula: {_leading(cell)}{where}. Try a lower learning rate or arch_lr.")
