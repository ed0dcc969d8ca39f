"""Digits: scikit-learn's bundled 8×8 handwritten digits (UCI optdigits test set).

``sklearn.datasets.load_digits`` reads a CSV shipped inside scikit-learn (no download):
1797 images, 10 classes, pixel values 0..16. The images are split by a deterministic
stratified shuffle (``test_fraction`` = 0.2 → 1437 train / 360 test, the same split for
every task seed so results are comparable), scaled to [0, 1] and standardised with the
training set's pixel mean and std. Tensors: x (N, 1, 8, 8) float32, y (N,) int64.

Model: :func:`grafs.models.resnet_small` (CIFAR-style ResNet, widths 16/32/64, one
BasicBlock per stage, 7 ReLU sites; feature maps 8×8 → 4×4 → 2×2).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models.resnet import resnet_small
from grafs.tasks.base import Task, apply_overrides, check_option
from grafs.searching.config import SearchConfig, TrainConfig

__all__ = ["load_digits", "make_digits_task", "DATA_DEFAULTS"]

DATA_DEFAULTS: dict[str, Any] = {
    "test_fraction": 0.2,
    "split_seed": 0,        # the stratified split's seed (fixed across task seeds)
    "width": 16,            # ResNet stem width
    "blocks_per_stage": 1,
}


@functools.lru_cache(maxsize=8)
def _load(test_fraction: float, split_seed: int):
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover
        raise GrafsError("the 'digits' task needs scikit-learn: pip install scikit-learn "
                         "(or grafs[tasks])") from exc
    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0      # (1797, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.RandomState(split_seed)
    train_idx, test_idx = [], []
    for c in np.unique(labels):                 # stratified: the same share of every class
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = np.sort(np.concatenate(train_idx))
    test_idx = np.sort(np.concatenate(test_idx))
    # shuffle the order deterministically so batches mix classes
    train_idx = train_idx[rng.permutation(len(train_idx))]
    test_idx = test_idx[rng.permutation(len(test_idx))]
    xtr, xte = images[train_idx], images[test_idx]
    mean, std = float(xtr.mean()), float(xtr.std())
    xtr = ((xtr - mean) / std)[:, None]
    xte = ((xte - mean) / std)[:, None]
    out = (xtr, labels[train_idx], xte, labels[test_idx], mean, std)
    for a in out[:4]:
        a.setflags(write=False)
    return out


def load_digits(test_fraction: float = 0.2, split_seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x (N,1,8,8) float32, train_y (N,) int64, test_x, test_y)``, fresh tensors."""
    if not isinstance(test_fraction, (int, float)) or not 0.05 <= test_fraction <= 0.95:
        raise GrafsError(f"digits test_fraction must be in [0.05, 0.95], got {test_fraction!r}")
    if not isinstance(split_seed, int) or isinstance(split_seed, bool) or split_seed < 0:
        raise GrafsError(f"digits split_seed must be an int >= 0, got {split_seed!r}")
    xtr, ytr, xte, yte, _, _ = _load(float(test_fraction), int(split_seed))
    return (torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte))


# arch_lr 3e-2 and op normalisation (not the paper's): with 3e-3 the first drop came while α
# was still uniform (docs/results-teacher.md, docs/results-digits.md)
SEARCH_DEFAULTS = SearchConfig(
    epochs=10, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4,
    schedule="constant",
    arch_lr=3e-2, arch_weight_decay=1e-3, warmstart_epochs=1, shrink_start_epoch=2,
    train_fraction=0.75, normalize=True)

EVAL_DEFAULTS = TrainConfig(
    epochs=20, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4,
    schedule="cosine", min_lr=0.0)


def _build_model(activation, *, width: int, blocks: int) -> nn.Module:
    return resnet_small(num_classes=10, in_channels=1, width=width, blocks_per_stage=blocks,
                        activation=activation)


def make_digits_task(seed: int = 0, **overrides: Any) -> Task:
    search, evaluation, opts = apply_overrides("digits", SEARCH_DEFAULTS, EVAL_DEFAULTS,
                                               DATA_DEFAULTS, overrides)
    train_x, train_y, test_x, test_y = load_digits(opts["test_fraction"], opts["split_seed"])
    width = check_option("digits", "width", opts["width"])
    blocks = check_option("digits", "blocks_per_stage", opts["blocks_per_stage"])

    return Task(
        name="digits",
        description=(f"scikit-learn digits (8x8, {len(train_x)} train / {len(test_x)} test, "
                     f"stratified), small CIFAR-style ResNet (width {width}, "
                     f"{blocks} block(s)/stage), ReLU"),
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        model_builder=functools.partial(_build_model, width=width, blocks=blocks),
        default_activation=nn.ReLU, activation_types=(nn.ReLU,),
        search_config=search, eval_config=evaluation,
        metric_name="accuracy", higher_is_better=True, num_classes=10, seed=seed,
        info={"source": "sklearn.datasets.load_digits", **opts},
    )
