"""GRAFS: gradient-based activation function search (seeds/001 Algorithm 1).

``search(model, train_data, val_data)`` replaces the model's activations by one shared relaxed
cell, then for every training step

1. arch step: a fresh Dirichlet sample at every call site, loss on a validation batch,
   first-order Adam step on α and γ (betas (0.5, 0.999), weight decay); network grads zeroed;
2. weight step: a fresh sample, loss on the training batch, gradient accumulation, weight
   optimizer step — during the first ``warmstart_epochs`` epochs with the ORIGINAL activation.

Progressive shrinking drops ops at epoch starts on the log schedule (starting at 2·E0 by
default) so the cell is fully discrete by the last epoch; the result is the discretized formula.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from grafs.errors import GrafsError, SearchError
from grafs.runtime.discretize import found_formula
from grafs.runtime.schedule import shrink_schedule

DEFAULT_TYPES: tuple[type, ...] = (nn.ReLU, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Tanh,
                                   nn.Sigmoid, nn.Mish, nn.Softplus, nn.Hardswish, nn.SELU,
                                   nn.CELU, nn.PReLU, nn.ReLU6)


# ---------------------------------------------------------------------------------------------
# activation sites
class Act(nn.Module):
    """A placeholder activation for models that would otherwise call ``F.relu`` & co.

    Write ``self.act = grafs.Act("gelu")`` (any formula) in your model and call it; it computes
    that formula until :func:`replace_activations` (and so :func:`search`) swaps it out.
    """

    def __init__(self, formula: str = "relu(x)"):
        super().__init__()
        from grafs.compiler import compile as gcompile
        self.formula = formula
        self.fn = gcompile(formula, backend="eager")

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return repr(self.formula)


def replace_activations(model: nn.Module, factory: Callable[[nn.Module], nn.Module] | Callable[[], nn.Module],
                        types: Sequence[type] = DEFAULT_TYPES) -> int:
    """Replace every submodule of one of ``types`` (and every :class:`Act`) in place.

    ``factory`` is called once per site, with the module it replaces if it takes an argument.
    Returns the number of sites replaced; raises GrafsError if there are none.
    """
    import inspect
    types = tuple(types) + (Act,)
    try:
        takes_arg = len(inspect.signature(factory).parameters) >= 1
    except (TypeError, ValueError):
        takes_arg = False
    count = 0
    stack = [model]
    while stack:
        parent = stack.pop()
        for name, child in list(parent.named_children()):
            if isinstance(child, types):
                setattr(parent, name, factory(child) if takes_arg else factory())
                count += 1
            else:
                stack.append(child)
    if count == 0:
        raise GrafsError(f"no activation modules of types {[t.__name__ for t in types]} found in "
                         f"{type(model).__name__}; use grafs.Act in place of functional calls")
    return count


class SearchSite(nn.Module):
    """One activation site during a search: the original activation (for warm-start weight
    steps) and the shared relaxed cell."""

    def __init__(self, original: nn.Module, cell: nn.Module, state: dict):
        super().__init__()
        self.original = original
        self.cell = cell
        self._state = state  # shared: {"use_cell": bool}

    def forward(self, x):
        return self.cell(x) if self._state["use_cell"] else self.original(x)


# ---------------------------------------------------------------------------------------------
# data
def _as_dataset(data, name: str):
    from torch.utils.data import Dataset, TensorDataset
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        if len(data[0]) != len(data[1]):
            raise GrafsError(f"{name}: inputs and targets differ in length ({len(data[0])} vs {len(data[1])})")
        return TensorDataset(*data)
    raise GrafsError(f"{name} must be a (inputs, targets) pair of tensors, a Dataset or a DataLoader, "
                     f"got {type(data).__name__}")


class _Batches:
    """Seeded, resumable batching: epoch e uses permutation seeded by (seed, e, stream)."""

    # tensor data up to this size is moved to the accelerator once, not batch by batch
    max_device_bytes = 2 << 30

    def __init__(self, data, batch_size: int, seed: int, stream: int, name: str,
                 device: torch.device | None = None, shard: tuple[int, int] | None = None):
        from torch.utils.data import DataLoader
        self.loader = data if isinstance(data, DataLoader) else None
        self.data = None if self.loader is not None else _as_dataset(data, name)
        self.batch_size = batch_size
        self.seed, self.stream = seed, stream
        # distributed search: (rank, world size); this rank reads every world-th sample of the
        # shared permutation, so step i of all ranks together is step i of a single process
        # with batch_size × world size
        self.rank, self.world = shard or (0, 1)
        if self.loader is not None and self.world > 1:
            from torch.utils.data import DistributedSampler
            if not isinstance(self.loader.sampler, DistributedSampler):
                raise GrafsError(f"{name}: a distributed search shards tensors and Datasets itself; "
                                 f"a DataLoader must use a torch.utils.data.DistributedSampler")
        if self.data is not None and len(self.data) == 0:
            raise GrafsError(f"{name} is empty")
        self.tensors = getattr(self.data, "tensors", None)
        if (self.tensors is not None and device is not None and device.type != "cpu"
                and sum(t.numel() * t.element_size() for t in self.tensors) <= self.max_device_bytes):
            self.tensors = tuple(t.to(device) for t in self.tensors)

    def __len__(self):
        if self.loader is not None:
            return len(self.loader)
        return math.ceil(math.ceil(len(self.data) / self.world) / self.batch_size)

    def epoch(self, e: int) -> Iterable:
        if self.loader is not None:
            if self.world > 1:
                self.loader.sampler.set_epoch(e)
            yield from self.loader
            return
        g = torch.Generator().manual_seed(self.seed * 100_003 + e * 7 + self.stream)
        perm = torch.randperm(len(self.data), generator=g)
        if self.world > 1:  # padded by wrapping around (as DistributedSampler): equal shards
            perm = torch.cat([perm, perm[:(-len(perm)) % self.world]])[self.rank::self.world]
        tensors = self.tensors
        if tensors is not None:
            perm = perm.to(tensors[0].device)
        for i in range(0, len(perm), self.batch_size):
            idx = perm[i:i + self.batch_size]
            if tensors is not None:
                yield tuple(t[idx] for t in tensors)
            else:
                items = [self.data[int(j)] for j in idx]
                yield tuple(torch.stack([torch.as_tensor(it[k]) for it in items]) for k in range(len(items[0])))


def resolve_device(device=None) -> torch.device:
    """``None`` or "auto": CUDA when available, else the CPU; otherwise ``torch.device(device)``,
    checked to exist."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise GrafsError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GrafsError(f"device {device!r} requested but CUDA is not available here; use 'cpu'")
    return dev


def split_dataset(data, fraction: float = 0.75, seed: int = 0):
    """Split tensors or a Dataset into (train, val) = (fraction, 1 - fraction), seeded."""
    ds = _as_dataset(data, "train_data")
    n = len(ds)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(math.floor(fraction * n))
    if k == 0 or k == n:
        raise GrafsError(f"cannot split {n} samples {fraction:.0%}/{1 - fraction:.0%}")
    tensors = getattr(ds, "tensors", None)
    if tensors is not None:
        return tuple(t[perm[:k]] for t in tensors), tuple(t[perm[k:]] for t in tensors)
    from torch.utils.data import Subset
    return Subset(ds, perm[:k].tolist()), Subset(ds, perm[k:].tolist())


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> float | None:
    if y.dtype in (torch.int64, torch.int32) and out.dim() >= 1 and out.shape[:-1] == y.shape:
        return float((out.argmax(-1) == y).float().mean())
    return None


def _default_loss(out, y):
    if out.dim() == 3 and y.dim() == 2:  # sequence models: (B, T, V) vs (B, T)
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return nn.functional.cross_entropy(out, y)


# ---------------------------------------------------------------------------------------------
# result
@dataclass
class SearchResult:
    """What a search found, and how.

    ``formula``: the discretized activation, exact (parses with grafs.parse into the same
    function; if the highest-α ops give a formula without x, the closest one with x and a
    GrafsWarning, see grafs.runtime.discretize); ``display``: it rounded; ``history``: per epoch the
    α of every hole, γ, losses, accuracies, active-op counts, the leading formula and per hole
    the normalised entropy of the Dirichlet mean (grafs.callbacks.normalized_entropy), plus the
    dropped ops with their epochs; ``settings``: the arguments of the run.
    """
    formula: str
    history: dict
    settings: dict = field(default_factory=dict)
    search_seconds: float = 0.0
    cell_state: dict | None = None

    @property
    def expr(self):
        from grafs.grammar.parser import parse
        return parse(self.formula)

    @property
    def display(self) -> str:
        """The formula for people: constants folded, simplified, numbers rounded to 4
        significant digits (it parses, but only ``formula`` is exactly what was found)."""
        from grafs.grammar.display import display
        return display(self.formula)

    @property
    def activation(self) -> nn.Module:
        """The found activation compiled (inductor backend)."""
        from grafs.compiler import compile as gcompile
        return gcompile(self.formula)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/result.json`` and ``path/cell.pt`` (atomically, file by file)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        meta = {"formula": self.formula, "history": self.history, "settings": self.settings,
                "search_seconds": self.search_seconds, "grafs_result_version": 1}
        _atomic_write_text(p / "result.json", json.dumps(meta, indent=1, default=_json_default))
        if self.cell_state is not None:
            _atomic_torch_save(self.cell_state, p / "cell.pt")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SearchResult":
        p = Path(path)
        f = p / "result.json" if p.is_dir() else p
        try:
            meta = json.loads(f.read_text())
            formula = meta["formula"]
        except (OSError, ValueError, KeyError) as err:
            raise GrafsError(f"{f} is not a grafs search result: {err}") from None
        from grafs.grammar.parser import parse
        parse(formula)  # a corrupt formula is an error now, not at first use
        cell = p / "cell.pt" if p.is_dir() else None
        state = torch.load(cell, weights_only=True) if cell is not None and cell.exists() else None
        return cls(formula, meta.get("history", {}), meta.get("settings", {}),
                   meta.get("search_seconds", 0.0), state)

    def __repr__(self) -> str:
        return f"SearchResult(formula={self.formula!r}, epochs={len(self.history.get('epochs', []))})"


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# the search
def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": json.dumps(_np_state()),
          "python": json.dumps(random.getstate(), default=list)}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _np_state():
    s = np.random.get_state()
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    s = json.loads(st["numpy"])
    np.random.set_state((s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4]))
    py = json.loads(st["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_AMP = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _Stepper:
    """One GRAFS training step (seeds/001 Algorithm 1): the arch step on a validation batch,
    then the weight step. Shared by :func:`search` and bench/search_step.py, so what the bench
    times is what a search runs. Nothing here reads a value back to the host (except the fp16
    GradScaler's inf check). With the weights frozen during the arch step, gradients the
    weight step accumulates over ``grad_accumulation`` steps are kept intact."""

    def __init__(self, model, cell, state, weights, arch_params, w_opt, a_opt, w_sched, loss_fn,
                 dev: torch.device, amp: str | None = None, grad_accumulation: int = 1,
                 n_sites: int | None = None, dist=None):
        self.model, self.cell, self.state = model, cell, state
        self.dist = dist  # grafs.distributed.Dist: gradients averaged over the ranks
        self.weights, self.arch_params = weights, arch_params
        self.w_opt, self.a_opt, self.w_sched = w_opt, a_opt, w_sched
        self.loss_fn, self.dev = loss_fn, dev
        self.amp = _AMP[amp]
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

    def step(self, xb, yb, xv, yv, warm: bool, update: bool = True):
        """Returns the weight step's (output, loss), both still on the device."""
        model, state = self.model, self.state
        xb, yb, xv, yv = self._to(xb), self._to(yb), self._to(xv), self._to(yv)
        # 1. arch step on a validation batch (fresh Dirichlet samples at every call)
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
            if self.dist is not None:
                self.dist.average_grads(self.arch_params)
            self.a_scaler.step(self.a_opt)
            self.a_scaler.update()
            self.a_opt.zero_grad(set_to_none=True)
        # 2. weight step (original activation while warm-starting); α and γ are frozen so
        # backward does not differentiate through the Dirichlet sample for nothing
        state["use_cell"] = not warm
        for p in self.arch_params:
            p.requires_grad_(False)
        try:
            if self.n_sites:
                self.cell.clear_samples()
                if not warm:
                    self.cell.refresh_samples(self.n_sites)
            with self._autocast():
                out = model(xb)
                loss = self.loss_fn(out, yb)
            self.w_scaler.scale(loss / self.grad_accumulation).backward()
        finally:
            for p in self.arch_params:
                p.requires_grad_(True)
            if self.n_sites:
                self.cell.clear_samples()
        if update:
            if self.dist is not None:
                self.dist.average_grads(self.weights)
            self.w_scaler.step(self.w_opt)
            self.w_scaler.update()
            self.w_opt.zero_grad(set_to_none=True)
            if self.w_sched is not None:
                self.w_sched.step()
        self.last_vloss = vloss.detach()
        return out.detach(), loss.detach()


class _Meter:
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


def search(model: nn.Module, train_data, val_data=None, *, space=None, epochs: int = 10,
           warmstart_epochs: int = 1, shrink_start: int | None = None, seed: int = 0,
           batch_size: int = 128, loss_fn: Callable | None = None,
           optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
           scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
           arch_lr: float = 1e-3, arch_weight_decay: float = 1e-3,
           arch_betas: tuple[float, float] = (0.5, 0.999), grad_accumulation: int = 1,
           activation_types: Sequence[type] = DEFAULT_TYPES, cell_mode: str = "auto",
           device: str | torch.device | None = None, checkpoint_dir: str | os.PathLike | None = None,
           resume: str | os.PathLike | None = None, progress: bool = True,
           train_fraction: float = 0.75, max_steps_per_epoch: int | None = None,
           amp: str | None = None, check_every: int | None = None,
           callbacks: Iterable[Any] | None = None,
           distributed: bool | None = None,
           _stop_after_epoch: int | None = None) -> SearchResult:
    """Run a GRAFS search and return the discretized activation (see module docstring).

    ``train_data``/``val_data``: (inputs, targets) tensors, a Dataset or a DataLoader; with no
    ``val_data`` the training data is split ``train_fraction``/rest (75/25). ``optimizer`` and
    ``scheduler`` are factories (``lambda params: torch.optim.SGD(params, 0.1)``,
    ``lambda opt: ...``; the scheduler steps after every weight-optimizer step); defaults:
    Adam(1e-3), no scheduler.
    ``device``: where the search runs (default: the model's device); tensor data that fits is
    moved there once. ``amp``: None (fp32), "bf16" or "fp16" (autocast; fp16 with loss
    scaling); the cell computes in fp32 either way. ``cell_mode``: "auto" (the Triton cell on
    CUDA, the lean eager path elsewhere; see :class:`grafs.runtime.cell.RelaxedCell`), or a
    mode by name. ``check_every``: steps between the host syncs that check the losses for
    NaN/inf (default 1 on CPU, where a sync is free, 25 on accelerators). ``checkpoint_dir``
    gets ``checkpoint.pt`` after every epoch; ``resume`` continues from such a directory and
    gives exactly the result of the uninterrupted run with the same arguments.
    ``distributed``: data-parallel over a ``torch.distributed`` process group (see
    grafs.distributed; launch with torchrun): None uses one if it is initialised, True also
    initialises it from torchrun's environment, False ignores it. ``batch_size`` is then per
    process; every rank returns the same result, and rank 0 alone writes checkpoints.
    ``callbacks``: :class:`grafs.Callback` instances told of every step and epoch (experiment
    tracking, e.g. :class:`grafs.TensorBoardLogger`; see grafs.callbacks).
    """
    from grafs.callbacks import CallbackList, SearchStart, StepInfo, epoch_info, hole_entropies
    from grafs.runtime.space import SearchSpace

    if epochs < 1:
        raise GrafsError(f"epochs must be >= 1, got {epochs}")
    if not 0 <= warmstart_epochs < epochs:
        raise GrafsError(f"warmstart_epochs must be in [0, epochs), got {warmstart_epochs} with epochs={epochs}")
    if grad_accumulation < 1:
        raise GrafsError(f"grad_accumulation must be >= 1, got {grad_accumulation}")
    if amp not in _AMP:
        raise GrafsError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    cbs = CallbackList(callbacks)
    space = space or SearchSpace.grafs()
    dev = resolve_device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    from grafs import distributed as _dist
    dist = _dist.context(distributed, dev, device is not None)
    if dist is not None:
        dev = dist.device
    if check_every is None:
        check_every = 1 if dev.type == "cpu" else 25
    if check_every < 1:
        raise GrafsError(f"check_every must be >= 1, got {check_every}")
    # shrinking starts at 2·E0 by default (the paper), or earlier if the run is too short for that
    start = shrink_start if shrink_start is not None else max(1, min(2 * warmstart_epochs, epochs - 1))
    schedule = shrink_schedule(space.num_ops, len(space.holes), epochs, start) if epochs > 1 else {}
    settings = dict(epochs=epochs, warmstart_epochs=warmstart_epochs, shrink_start=start, seed=seed,
                    batch_size=batch_size, arch_lr=arch_lr, arch_weight_decay=arch_weight_decay,
                    arch_betas=list(arch_betas), grad_accumulation=grad_accumulation,
                    template=space.template, num_ops=space.num_ops, cell_mode=cell_mode,
                    max_steps_per_epoch=max_steps_per_epoch, amp=amp,
                    **({"normalize": True} if getattr(space, "normalize", False) else {}))
    world = 1 if dist is None else dist.world_size
    if dist is not None:
        settings["world_size"] = world

    seed_everything(seed if dist is None else dist.seed(seed))
    if val_data is None:
        train_data, val_data = split_dataset(train_data, train_fraction, seed)
    shard = None if dist is None else dist.shard
    train = _Batches(train_data, batch_size, seed, 0, "train_data", dev, shard)
    val = _Batches(val_data, batch_size, seed, 1, "val_data", dev, shard)

    model = model.to(dev)
    cell = space.relax(mode=cell_mode, seed=seed).to(dev)
    state = {"use_cell": True}
    n_sites = replace_activations(model, lambda orig: SearchSite(orig, cell, state), activation_types)
    arch_params = list(cell.arch_parameters())
    arch_ids = {id(p) for p in arch_params}
    weights = [p for p in model.parameters() if id(p) not in arch_ids]
    w_opt = optimizer(weights) if optimizer is not None else torch.optim.Adam(weights, lr=1e-3)
    w_sched = scheduler(w_opt) if scheduler is not None else None
    a_opt = torch.optim.Adam(arch_params, lr=arch_lr, betas=tuple(arch_betas), weight_decay=arch_weight_decay)
    loss_fn = loss_fn or _default_loss
    stepper = _Stepper(model, cell, state, weights, arch_params, w_opt, a_opt, w_sched, loss_fn,
                       dev, amp, grad_accumulation, n_sites, dist)
    if dist is not None:
        dist.sync_model(model)

    history: dict[str, list] = {k: [] for k in (
        "epochs", "train_loss", "val_loss", "train_acc", "val_acc", "num_active", "alpha",
        "gamma", "formula", "dropped", "seconds", "entropy")}
    first_epoch = 0
    elapsed = 0.0
    ckpt_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    if resume is not None:
        rp = Path(resume)
        rp = rp / "checkpoint.pt" if rp.is_dir() else rp
        try:
            ck = torch.load(rp, weights_only=True, map_location=dev) if dist is None else \
                dist.from_rank0(lambda: torch.load(rp, weights_only=True, map_location="cpu"))
        except (OSError, RuntimeError, EOFError) as err:
            raise GrafsError(f"cannot resume from {rp}: {err}") from None
        if int(ck.get("world_size", 1)) != world:
            raise GrafsError(f"cannot resume from {rp}: it was written by a search on "
                             f"{ck.get('world_size', 1)} process(es), this one runs on {world}; "
                             f"resume with the same number of processes")
        if json.loads(ck["settings"]) != json.loads(json.dumps(settings, default=_json_default)):
            raise GrafsError(f"cannot resume from {rp}: it was written by a search with other settings "
                             f"({ck['settings']})")
        model.load_state_dict(ck["model"])
        w_opt.load_state_dict(ck["w_opt"])
        a_opt.load_state_dict(ck["a_opt"])
        if w_sched is not None and "w_sched" in ck:
            w_sched.load_state_dict(ck["w_sched"])
        history = json.loads(ck["history"])
        first_epoch = int(ck["epoch"]) + 1
        elapsed = float(ck["elapsed"])
        _set_rng_state(ck["rng"] if dist is None else ck["rng_ranks"][dist.rank])
        if ckpt_path is None:
            ckpt_path = rp

    steps_per_epoch = len(train) if max_steps_per_epoch is None else min(len(train), max_steps_per_epoch)
    cbs.on_search_start(SearchStart(dict(settings), [h.name for h in space.holes], epochs,
                                    first_epoch, steps_per_epoch, n_sites))
    bar = None
    if progress and (dist is None or dist.rank == 0):
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs * steps_per_epoch, initial=first_epoch * steps_per_epoch,
                   desc="GRAFS search", unit="step", dynamic_ncols=True)
    t_start = time.perf_counter() - elapsed
    try:
        for epoch in range(first_epoch, epochs):
            t_epoch = time.perf_counter()
            if epoch in schedule:
                if epoch == min(schedule):
                    _warn_if_unlearned(cell, epoch, history)
                for hole, op in cell.drop(schedule[epoch]):
                    history["dropped"].append([epoch, hole, op])
            warm = epoch < warmstart_epochs
            model.train()
            meter = _Meter(dev)
            val_iter = iter(val.epoch(epoch))
            w_opt.zero_grad(set_to_none=True)
            for step, (xb, yb) in enumerate(train.epoch(epoch)):
                if step >= steps_per_epoch:
                    break
                try:
                    xv, yv = next(val_iter)
                except StopIteration:
                    val_iter = iter(val.epoch(epoch + 10_000 * (step + 1)))
                    xv, yv = next(val_iter)
                out, loss = stepper.step(xb, yb, xv, yv, warm=warm,
                                         update=(step + 1) % grad_accumulation == 0
                                         or step + 1 == steps_per_epoch)
                meter.add(loss, out, yb, stepper.last_vloss)
                if cbs:
                    cbs.on_step_end(StepInfo(epoch, step, epoch * steps_per_epoch + step, loss,
                                             stepper.last_vloss, warm))
                if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                    meter.check(epoch, cell, ckpt_path, dist)   # the only host sync of a step
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix_str(f"ep {epoch + 1}/{epochs} ops {cell.num_active()} "
                                            f"loss {meter.last:.3f}" + (" warm" if warm else ""))
            tot = meter.totals()
            if dist is not None:  # the history is every rank's: sums over all shards
                tot = dict(zip(tot, dist.sum(*tot.values())))
                dist.average_buffers(model)
            state["use_cell"] = True
            vl, va = _evaluate(model, val, epoch, loss_fn, dev, cell, ckpt_path, dist)
            formula = str(cell.discretize())
            history["epochs"].append(epoch)
            history["train_loss"].append(tot["loss"] / max(tot["n"], 1))
            history["train_acc"].append(tot["acc"] / tot["nacc"] if tot["nacc"] else None)
            history["val_loss"].append(vl)
            history["val_acc"].append(va)
            history["num_active"].append(cell.num_active())
            history["alpha"].append([a.detach().cpu().tolist() for a in cell.alpha])
            history["gamma"].append(cell.gamma.detach().cpu().tolist())
            history["formula"].append(formula)
            history["seconds"].append(time.perf_counter() - t_epoch)
            history.setdefault("entropy", []).append(hole_entropies(cell))  # old checkpoints lack it
            if bar is not None:
                short = formula if len(formula) < 70 else formula[:67] + "…"
                bar.write(f"epoch {epoch + 1:>3}/{epochs}  ops {cell.num_active():>3}  "
                          f"train {history['train_loss'][-1]:.4f}  val {vl:.4f}"
                          + (f"  val acc {va:.3f}" if va is not None else "") + f"  {short}")
            # distributed: rank 0 writes, with every rank's RNG state; the others wait for it
            rngs = dist.gather(_rng_state()) if dist is not None and ckpt_path is not None else None
            if ckpt_path is not None and (dist is None or dist.rank == 0):
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                ck = {"epoch": epoch, "model": model.state_dict(), "w_opt": w_opt.state_dict(),
                      "a_opt": a_opt.state_dict(), "history": json.dumps(history, default=_json_default),
                      "settings": json.dumps(settings, default=_json_default), "rng": _rng_state(),
                      "elapsed": time.perf_counter() - t_start}
                if w_sched is not None:
                    ck["w_sched"] = w_sched.state_dict()
                if dist is not None:
                    ck.update(world_size=world, rng_ranks=rngs)
                _atomic_torch_save(ck, ckpt_path)
            if dist is not None and ckpt_path is not None:
                dist.barrier()
            cbs.on_epoch_end(epoch_info(history, cell, epochs, warm))
            if _stop_after_epoch is not None and epoch >= _stop_after_epoch:
                raise _Interrupted(epoch)
    finally:
        if bar is not None:
            bar.close()
    settings["activation_sites"] = n_sites
    result = SearchResult(str(found_formula(cell)), history, settings, time.perf_counter() - t_start,
                          {k: v.detach().cpu() for k, v in cell.state_dict().items()})
    cbs.on_search_end(result)
    return result


#: normalised entropy of the Dirichlet mean above which a hole's α has not told its ops apart;
#: measured on the teacher task (docs/results-teacher.md): a search whose ops were dropped at
#: random had 0.998–0.999 at its first drop, searches that recovered the teacher 0.97–0.98
UNLEARNED_ENTROPY = 0.995


def _warn_if_unlearned(cell, epoch: int, history: dict) -> None:
    """Warn when the first ops are about to be dropped while α is still about uniform."""
    import warnings
    from grafs.callbacks import hole_entropies
    from grafs.errors import GrafsWarning
    ent = hole_entropies(cell)
    if ent and min(ent) > UNLEARNED_ENTROPY:
        msg = (f"the search drops its first ops at epoch {epoch} while α is still about uniform "
               f"(normalised entropy of every hole's Dirichlet mean > {UNLEARNED_ENTROPY}: "
               f"min {min(ent):.4f}), so these drops are close to random; give α more arch steps "
               f"before shrinking (more epochs or steps per epoch, a later shrink_start) or a "
               f"larger arch_lr")
        history.setdefault("warnings", []).append(msg)
        warnings.warn(msg, GrafsWarning, stacklevel=3)


class _Interrupted(Exception):
    """Test hook: stop a search after an epoch as if the process had been killed."""


def _leading(cell) -> str:
    try:
        return str(cell.discretize())
    except Exception:  # pragma: no cover - only for error messages
        return "?"


def _check_finite(loss, kind, epoch, step, cell, ckpt_path) -> None:
    if not torch.isfinite(loss):
        _raise_non_finite(float(loss), kind, epoch, step, cell, ckpt_path)


def _raise_non_finite(value, kind, epoch, step, cell, ckpt_path) -> None:
    where = f"; the last good checkpoint is {ckpt_path}" if ckpt_path is not None and ckpt_path.exists() else ""
    raise SearchError(f"non-finite {kind} loss ({value}) at epoch {epoch + 1}, step {step + 1}; "
                      f"leading formula: {_leading(cell)}{where}. Try a lower learning rate or arch_lr.")


@torch.no_grad()
def _evaluate(model, val: _Batches, epoch, loss_fn, dev, cell, ckpt_path, dist=None):
    model.eval()
    tot_loss, tot_acc, n, nacc = 0.0, 0.0, 0, 0
    for xb, yb in val.epoch(epoch):
        xb, yb = xb.to(dev), yb.to(dev)
        out = model(xb)
        loss = loss_fn(out, yb)
        if dist is None:
            _check_finite(loss, "validation", epoch, 0, cell, ckpt_path)
        tot_loss += float(loss) * len(xb)
        n += len(xb)
        acc = _accuracy(out, yb)
        if acc is not None:
            tot_acc += acc * len(xb)
            nacc += len(xb)
    model.train()
    if dist is not None:  # over all shards; a NaN on any rank makes the sum NaN on every rank
        tot_loss, tot_acc, n, nacc = dist.sum(tot_loss, tot_acc, n, nacc)
        _check_finite(torch.tensor(tot_loss), "validation", epoch, 0, cell, ckpt_path)
    return tot_loss / max(n, 1), (tot_acc / nacc if nacc else None)


def search_task(task, *, seed: int = 0, epochs: int | None = None, space=None, progress: bool = True,
                checkpoint_dir=None, resume=None, cell_mode: str = "auto",
                max_steps_per_epoch: int | None = None, device=None,
                amp: str | None = None, callbacks=None,
                distributed: bool | None = None) -> SearchResult:
    """Run :func:`search` on a built-in task (grafs.tasks) with its search configuration
    (distributed: the task's batch size per process, see :func:`search`)."""
    from grafs.distributed import world_size
    cfg = task.search_config
    epochs = cfg.epochs if epochs is None else epochs
    (xt, yt), (xv, yv) = task.search_split(seed=seed)
    spe = cfg.steps_per_epoch(math.ceil(len(xt) / world_size(distributed)))  # a rank's shard
    if max_steps_per_epoch is not None:
        spe = min(spe, max_steps_per_epoch)
    warm = min(cfg.warmstart_epochs, epochs - 1)
    if space is None:
        space = task.make_search_space()     # e.g. inr adds sin/cos
        space.normalize = cfg.normalize
    result = search(task.make_model(seed=seed), (xt, yt), (xv, yv), space=space, epochs=epochs,
                    warmstart_epochs=warm,
                    shrink_start=max(1, min(cfg.shrink_start_epoch, epochs - 1)) if epochs > 1 else None,
                    seed=seed, batch_size=cfg.batch_size, loss_fn=task.loss_fn,
                    optimizer=cfg.make_optimizer,
                    scheduler=lambda opt: cfg.make_scheduler(opt, epochs * spe),
                    arch_lr=cfg.arch_lr, arch_weight_decay=cfg.arch_weight_decay,
                    arch_betas=tuple(cfg.arch_betas), grad_accumulation=cfg.grad_accum_steps,
                    activation_types=task.activation_types, cell_mode=cell_mode,
                    checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
                    max_steps_per_epoch=spe, device=device, amp=amp, callbacks=callbacks,
                    distributed=distributed)
    result.settings["task"] = task.name
    return result
