"""One GRAFS search step (arch step, then weight step) and the on-device loss meter."""
from __future__ import annotations

import torch

from grafs.errors import SearchError
from grafs.searching.searcher import AMP_DTYPES, SearchSteps, optimizer_step


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float | None:
    if y.dtype in (torch.int64, torch.int32) and out.dim() >= 1 and out.shape[:-1] == y.shape:
        return float((out.argmax(-1) == y).float().mean())
    return None


class Stepper:
    """One GRAFS training step (seeds/001 Algorithm 1): the arch step on a validation batch,
    then the weight step — :meth:`SearchSteps.arch_step` and :meth:`SearchSteps.weight_step`
    (the calls a user's own loop makes, grafs.Searcher) with the weight optimizer, the loss
    and gradient accumulation around them. Shared by :func:`search` and bench/search_step.py,
    so what the bench times is what a search runs. Nothing here reads a value back to the host
    (except the fp16 GradScaler's inf check). With the weights frozen during the arch step,
    gradients the weight step accumulates over ``grad_accumulation`` steps are kept intact.

    Built from a model whose sites already hold ``cell`` (the pieces), or :meth:`of` a
    :class:`~grafs.searching.searcher.Searcher`."""

    def __init__(self, model, cell, state, weights, arch_params, w_opt, a_opt, w_sched, loss_fn,
                 dev: torch.device, amp: str | None = None, grad_accumulation: int = 1,
                 n_sites: int | None = None, dist=None, single_level: bool = False, *,
                 steps: SearchSteps | None = None):
        self.search = steps if steps is not None else SearchSteps(
            model, cell, state, a_opt, weights=weights, arch_params=arch_params, n_sites=n_sites,
            amp=amp, device=dev, dist=dist)
        self.model, self.cell, self.state = model, cell, self.search.state
        self.n_sites = self.search.n_sites
        self.single_level = single_level
        self.dist = dist  # grafs.searching.distributed.Dist: gradients averaged over the ranks
        self.weights, self.arch_params = self.search.weights, self.search.arch_params
        self.w_opt, self.a_opt, self.w_sched = w_opt, self.search.arch_opt, w_sched
        self.loss_fn, self.dev = loss_fn, dev
        self.amp = AMP_DTYPES[amp]
        self.grad_accumulation = grad_accumulation
        # fp16 needs loss scaling; one scaler per optimizer (their steps are independent)
        self.w_scaler = torch.amp.GradScaler(dev.type, enabled=self.amp is torch.float16)

    @classmethod
    def of(cls, searcher: SearchSteps, w_opt, w_sched, loss_fn, grad_accumulation: int = 1,
           single_level: bool = False) -> "Stepper":
        """The step of ``searcher`` with this weight optimizer, scheduler and loss."""
        s = searcher
        return cls(s.model, s.cell, s.state, s.weights, s.arch_params, w_opt, s.arch_opt, w_sched,
                   loss_fn, s.dev, s.amp_name, grad_accumulation, s.n_sites, s.dist, single_level,
                   steps=s)

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
        model, loss_fn = self.model, self.loss_fn
        for xa, ya in [(xv, yv), *more_val]:
            # 1. arch step on a validation batch (fresh Dirichlet samples at every call)
            xa, ya = self._to(xa), self._to(ya)
            vloss = self.search.arch_step(lambda: loss_fn(model(xa), ya))
        self.last_vloss = vloss
        # 2. weight step (original activation while warm-starting)
        return self._train_pass(xb, yb, use_cell=not warm, joint=False, update=update)

    def _train_pass(self, xb, yb, use_cell: bool, joint: bool, update: bool):
        """Forward/backward on a training batch and (``update``) the weight optimizer's step.
        Bilevel (``joint=False``): α and γ are frozen, so backward does not differentiate
        through the Dirichlet sample for nothing. Single-level (``joint=True``): the same pass
        also gives α/γ their gradients and the arch optimizer steps with the weights' (half
        the passes of the bilevel step; α then fits the training batches, as in single-level
        DARTS variants)."""
        with self.search.weight_step(use_cell=use_cell, train_arch=joint):
            with self.search.autocast():
                out = self.model(xb)
                loss = self.loss_fn(out, yb)
            self.w_scaler.scale(loss / self.grad_accumulation).backward()
        if update:
            self._apply(self.w_scaler, self.w_opt, self.weights,
                        also=[self.a_opt] if joint else [])
            if self.w_sched is not None:
                self.w_sched.step()
        return out.detach(), loss.detach()

    def _apply(self, scaler, opt, params, also=()) -> None:
        """One optimizer step on gradients averaged over the ranks (data-parallel search)."""
        optimizer_step(scaler, opt, params, self.dist, also)


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
        if vloss is not None:       # (the arch step on the validation batch ran first)
            self.window.append((self.step, "validation", vloss))
        self.window.append((self.step, "training", loss))
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
    if not all(bool(torch.isfinite(a).all()) for a in cell.arch_parameters()):
        return "none (α or γ is not finite)"
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
