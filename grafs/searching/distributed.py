"""Data-parallel GRAFS search on ``torch.distributed`` (one process per device, ``torchrun``).

:func:`grafs.search` calls :func:`context`; with a process group of two or more processes it
gets a :class:`Dist` and then, where the single-process search does nothing of the kind:

* every rank reads its own shard of the (identically split and shuffled) data;
* the model's parameters and floating buffers start as rank 0's (as DDP does);
* the weight step's gradients and the arch step's α/γ gradients are averaged over the ranks
  (explicit all-reduces rather than DDP: the cell replaces the model's activations before
  training and the arch step freezes the weights, neither of which DDP's reducer tolerates),
  so every rank takes identical optimizer steps and holds identical α, γ, drops and formula;
* each rank draws its own Dirichlet samples (its global RNG is seeded per rank);
* the NaN checks are agreed on (a non-finite loss on any rank stops every rank);
* rank 0 alone reads and writes checkpoints (with every rank's RNG state in them).

``batch_size`` is per process, as with DDP: the global batch is ``batch_size × world_size``.
A process group of one process is the plain search: :func:`context` returns None. Callbacks
run on every rank; pass them on rank 0 only for one log (``grafs search`` does). Reading the
checkpoint to resume and writing it after an epoch are agreed on too: when rank 0 cannot
(an unusable checkpoint, a full disk), every rank stops at once with rank 0's GrafsError. Any
other error raised on one rank alone ends that process; torchrun then stops the others.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as tdist
from torch import nn

from grafs.errors import GrafsError, SearchError

#: elements per flattened all-reduce (64 MB of fp32): few collectives, bounded extra memory
BUCKET_NUMEL = 1 << 24

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def init_from_env(device: torch.device) -> bool:
    """Initialise the default process group from torchrun's environment, unless one exists.

    NCCL for CUDA devices, gloo otherwise. Returns True if this call initialised it (the
    caller then owns it: :func:`shutdown`)."""
    if _initialized():
        return False
    if not tdist.is_available():
        raise GrafsError("distributed search needs torch.distributed, which this torch build lacks")
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise GrafsError(f"distributed=True needs torchrun's environment, but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not set; launch with "
                         f"`torchrun --nproc-per-node N your_script.py` (or `-m grafs search`)")
    cuda = device.type == "cuda" and tdist.is_nccl_available()
    if cuda:
        torch.cuda.set_device(_local_rank())
    tdist.init_process_group("nccl" if cuda else "gloo")
    return True


def env_world_size() -> int:
    """The world size torchrun announces (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def shutdown(wait: bool = True) -> None:
    """Destroy the default process group, after waiting for every rank if ``wait`` (not after
    an error: the other ranks may never get there)."""
    if _initialized():
        if wait:
            tdist.barrier()
        tdist.destroy_process_group()


def world_size(distributed: bool | None = None) -> int:
    """How many processes a search with this ``distributed`` argument runs on."""
    if distributed is False:
        return 1
    if _initialized():
        return tdist.get_world_size()
    return env_world_size() if distributed else 1


def rank() -> int:
    return tdist.get_rank() if _initialized() else 0


def _local_rank() -> int:
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return rank() % max(1, torch.cuda.device_count())


def context(distributed: bool | None, device: torch.device, explicit_device: bool) -> "Dist | None":
    """The distributed context of a search, or None for a single-process one.

    ``distributed``: None detects an initialised process group; True also initialises one from
    torchrun's environment; False ignores any. ``explicit_device``: the caller named the device
    (a CUDA device without an index, or one taken from the model, becomes ``cuda:LOCAL_RANK``).
    """
    if distributed is False:
        return None
    if not _initialized():
        if not distributed:
            return None
        init_from_env(device)
    if tdist.get_world_size() == 1:
        return None
    return Dist(device, explicit_device)


class Dist:
    """The collectives a data-parallel search needs, on the default process group."""

    def __init__(self, device: torch.device, explicit_device: bool = True):
        self.rank = tdist.get_rank()
        self.world_size = tdist.get_world_size()
        if device.type == "cuda" and (device.index is None or not explicit_device):
            device = torch.device("cuda", _local_rank())
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.device = device
        backend = tdist.get_backend()
        if backend == "nccl" and device.type != "cuda":
            raise GrafsError(f"the process group uses NCCL, which needs CUDA tensors, but the search "
                             f"runs on {device}; run it on CUDA or initialise the group with gloo")
        # where small host-side values travel: NCCL only moves CUDA tensors
        self.comm_device = device if backend == "nccl" else torch.device("cpu")

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def seed(self, seed: int) -> int:
        """This rank's global-RNG seed: independent Dirichlet samples (and dropout) per rank;
        rank 0 keeps ``seed`` itself."""
        return seed + 1_000_003 * self.rank

    # -- tensors -------------------------------------------------------------------------------
    @torch.no_grad()
    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's values."""
        _coalesced(tensors, lambda flat: tdist.broadcast(flat, src=0))

    @torch.no_grad()
    def average_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Replace ``tensors`` by their mean over the ranks (identical on every rank)."""
        w = self.world_size
        _coalesced(tensors, lambda flat: (tdist.all_reduce(flat), flat.div_(w)))

    def average_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Average the gradients of ``params`` over the ranks, as DDP does. Parameters without a
        gradient are skipped: which ones have none must be the same on every rank (as for DDP
        without ``find_unused_parameters``), which holds for a search's fixed code path."""
        self.average_([p.grad for p in params if p.grad is not None])

    def sync_model(self, model: nn.Module) -> None:
        """Start every rank from rank 0's parameters and floating buffers (as DDP does)."""
        self.broadcast_([*model.parameters(), *_float_buffers(model)])

    def average_buffers(self, model: nn.Module) -> None:
        """Average floating buffers (BatchNorm running statistics) over the ranks, so that
        evaluation, the checkpoint and a resume see one model state."""
        self.average_(_float_buffers(model))

    # -- host values ---------------------------------------------------------------------------
    def sum(self, *values: float) -> list[float]:
        """The sums over the ranks of a few numbers (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        tdist.all_reduce(t)
        return t.tolist()

    def failed_ranks(self, failed: bool) -> list[int]:
        """Every rank says whether it failed; all learn which did."""
        t = torch.zeros(self.world_size, dtype=torch.float32, device=self.comm_device)
        t[self.rank] = float(failed)
        tdist.all_reduce(t)
        return [r for r, v in enumerate(t.tolist()) if v]

    def stop_if_peer_failed(self, failed: bool, epoch: int, ckpt_path: Path | None) -> None:
        """Collective NaN check: a rank whose own losses are fine raises SearchError when another
        rank's were not (that rank raises its own, more detailed error)."""
        ranks = self.failed_ranks(failed)
        if ranks and not failed:
            where = (f"; the last good checkpoint is {ckpt_path}"
                     if ckpt_path is not None and ckpt_path.exists() else "")
            raise SearchError(f"rank {ranks[0]} of {self.world_size} got a non-finite loss in epoch "
                              f"{epoch + 1} (see its own error); rank {self.rank} stops with it{where}")

    def gather(self, obj: Any) -> list | None:
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
        out = [None] * self.world_size if self.rank == 0 else None
        tdist.gather_object(obj, out, dst=0)
        return out

    def from_rank0(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; every rank gets its result, or its error at once (no rank
        waits for one that failed): rank 0 raises its own exception, the others a GrafsError
        of the same class (SearchError for a foreign one) with rank 0's message."""
        box: list = [None]
        error = None
        if self.rank == 0:
            try:
                box[0] = (True, fn())
            except Exception as err:  # noqa: BLE001 - re-raised on every rank below
                error = err
                cls = type(err) if isinstance(err, GrafsError) else SearchError
                box[0] = (False, (cls, str(err) if isinstance(err, GrafsError)
                                  else f"{type(err).__name__}: {err}"))
        tdist.broadcast_object_list(box, src=0, device=self.comm_device)
        ok, value = box[0]
        if ok:
            return value
        if error is not None:
            raise error
        cls, message = value
        try:
            peer = cls(f"rank 0 of {self.world_size} failed, rank {self.rank} stops with it: "
                       f"{message}")
        except Exception:  # noqa: BLE001 - a GrafsError subclass with another signature
            peer = GrafsError(f"rank 0 of {self.world_size} failed, rank {self.rank} stops "
                              f"with it: {message}")
        raise peer

    def barrier(self) -> None:
        tdist.barrier()


def _float_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


def _coalesced(tensors: Iterable[torch.Tensor], op: Callable[[torch.Tensor], Any]) -> None:
    """Apply the in-place collective ``op`` to ``tensors`` through a few flat buffers (one per
    dtype and device, split at BUCKET_NUMEL elements) instead of one collective per tensor."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for ts in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for t in ts + [None]:
            if t is None or (bucket and size + t.numel() > BUCKET_NUMEL):
                if bucket:
                    flat = torch.cat([b.reshape(-1) for b in bucket])
                    op(flat)
                    for b, part in zip(bucket, flat.split([b.numel() for b in bucket])):
                        b.copy_(part.view_as(b))
                bucket, size = [], 0
            if t is not None:
                bucket.append(t)
                size += t.numel()
