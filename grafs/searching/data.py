"""Search data: datasets, seeded resumable batching, the train/validation split, the device."""
from __future__ import annotations

import math
from typing import Iterable

import torch

from grafs.errors import GrafsError


def _as_dataset(data, name: str):
    from torch.utils.data import Dataset, IterableDataset, TensorDataset
    if isinstance(data, IterableDataset):
        raise GrafsError(f"{name} is an IterableDataset: a search needs its length (steps per "
                         f"epoch) and seeded shuffles; pass a map-style Dataset, (inputs, targets) "
                         f"tensors, or a DataLoader with a length")
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        if len(data[0]) != len(data[1]):
            raise GrafsError(f"{name}: inputs and targets differ in length ({len(data[0])} vs {len(data[1])})")
        return TensorDataset(*data)
    if isinstance(data, (tuple, list)) and any(type(t).__module__ == "numpy" for t in data):
        raise GrafsError(f"{name} holds numpy arrays: convert them with torch.from_numpy(...) "
                         f"(an (inputs, targets) pair of tensors, a Dataset or a DataLoader)")
    raise GrafsError(f"{name} must be a (inputs, targets) pair of tensors, a Dataset or a DataLoader, "
                     f"got {type(data).__name__}")


class Batches:
    """Seeded, resumable batching: epoch e uses permutation seeded by (seed, e, stream). A last
    batch of one example joins the batch before it (a training-mode BatchNorm cannot take a
    batch of one, and with tensors or a Dataset the user cannot choose the batching)."""

    # tensor data up to this size is moved to the accelerator once, not batch by batch
    max_device_bytes = 2 << 30

    def __init__(self, data, batch_size: int, seed: int, stream: int, name: str,
                 device: torch.device | None = None, shard: tuple[int, int] | None = None):
        from torch.utils.data import DataLoader
        self.loader = data if isinstance(data, DataLoader) else None
        self.data = None if self.loader is not None else _as_dataset(data, name)
        self.batch_size = batch_size
        self.seed, self.stream = seed, stream
        self.name = name
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
            try:
                return len(self.loader)
            except TypeError:
                raise GrafsError(f"{self.name} is a DataLoader without a length (over an "
                                 f"IterableDataset): a search needs its steps per epoch; pass a "
                                 f"map-style Dataset, (inputs, targets) tensors, or a DataLoader "
                                 f"with a length") from None
        return len(self._stops(math.ceil(len(self.data) / self.world)))

    def _stops(self, n: int) -> list[int]:
        """Where the batches of ``n`` examples end (a lone last example joins the batch before)."""
        bs = self.batch_size
        stops = list(range(bs, n, bs)) + [n]
        if n > bs > 1 and n % bs == 1:
            stops = stops[:-2] + [n]
        return stops

    def epoch(self, e: int) -> Iterable:
        if self.loader is not None:
            if self.world > 1:
                self.loader.sampler.set_epoch(e)
            for batch in self.loader:
                yield _pair(batch, self.name, "batch")
            return
        g = torch.Generator().manual_seed(self.seed * 100_003 + e * 7 + self.stream)
        perm = torch.randperm(len(self.data), generator=g)
        if self.world > 1:  # padded by wrapping around (as DistributedSampler): equal shards
            perm = torch.cat([perm, perm[:(-len(perm)) % self.world]])[self.rank::self.world]
        tensors = self.tensors
        if tensors is not None:
            perm = perm.to(tensors[0].device)
        start = 0
        for stop in self._stops(len(perm)):
            idx, start = perm[start:stop], stop
            if tensors is not None:
                yield tuple(t[idx] for t in tensors)
            else:
                items = [_pair(self.data[int(j)], self.name, "item") for j in idx]
                yield tuple(torch.stack([torch.as_tensor(it[k]) for it in items]) for k in range(2))


def _pair(batch, name: str, what: str):
    """``batch`` when it is an (inputs, targets) pair, else a GrafsError saying what it is."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch
    if isinstance(batch, dict):
        got = f"a dict with keys {sorted(map(str, batch))[:6]}"
    elif isinstance(batch, (tuple, list)):
        got = f"a {type(batch).__name__} of {len(batch)}"
    else:
        got = type(batch).__name__
    raise GrafsError(f"{name}: each {what} must be an (inputs, targets) pair, got {got}; wrap "
                     f"the Dataset (a __getitem__ that returns (x, y)) or give the DataLoader a "
                     f"collate_fn that returns (inputs, targets)")


def check_data_arguments(batch_size, max_steps_per_epoch, train_fraction, val_data) -> None:
    """A GrafsError for a batch size, step cap or split fraction a search cannot use."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise GrafsError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if max_steps_per_epoch is not None and (not isinstance(max_steps_per_epoch, int)
                                            or isinstance(max_steps_per_epoch, bool)
                                            or max_steps_per_epoch < 1):
        raise GrafsError(f"max_steps_per_epoch must be an int >= 1 or None (every batch), got "
                         f"{max_steps_per_epoch!r}")
    if val_data is None and not (isinstance(train_fraction, (int, float))
                                 and 0 < train_fraction < 1):
        raise GrafsError(f"train_fraction (the share of train_data for weight steps; the rest "
                         f"is the validation data of the arch steps) must be between 0 and 1, "
                         f"got {train_fraction!r}")


def check_batches(train, val) -> None:
    """A GrafsError when the training or validation data gives no batch (an empty loader, or
    one with drop_last and fewer examples than a batch): a search would train nothing, or stop
    inside its first step."""
    for b, name in ((train, "train_data"), (val, "val_data")):
        if len(b) == 0:
            raise GrafsError(f"{name} gives no batch (empty, or a DataLoader with drop_last "
                             f"and fewer examples than its batch size); a search needs at least "
                             f"one batch of each")


def cycle(loader: Iterable) -> Iterable:
    """The loader's batches over and over: a fresh pass whenever one ends (arch steps read
    validation batches in turn, however many training batches there are)."""
    while True:
        yield from loader


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
    from torch.utils.data import DataLoader
    if isinstance(data, DataLoader):
        raise GrafsError("train_data is a DataLoader and no val_data was given: a DataLoader's "
                         "batches cannot be split into training and validation data; pass "
                         "val_data (a DataLoader, a Dataset or (inputs, targets) tensors), or "
                         "train_data as a Dataset or tensors to split it "
                         f"{fraction:.0%}/{1 - fraction:.0%}")
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
