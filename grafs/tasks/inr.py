"""INR: an implicit neural representation — a coordinate MLP that fits a grayscale photograph.

Image: scikit-image's bundled ``camera`` (512×512; read from the package's data folder,
nothing is downloaded), resized with anti-aliasing to ``size``×``size`` (default 64) and
scaled to [0, 1]. Each pixel is one example: x = its centre (row, column) in [-1, 1]²
(float32, (N, 2)), y = its intensity ((N, 1) float32).

Split by pixel: a fixed random ``test_fraction`` (default 0.2, drawn from ``split_seed``, the
same for every task seed) of the pixels is held out as the test set, the rest is the
training set; a search splits the training pixels once more, 75/25, into weight and
architecture steps. So search and evaluation both score how well the fitted function
predicts pixels it never saw — interpolation, where the smoothness and periodicity of the
activation decide the quality (SIREN: periodic activations fit images best). The metric is
the test PSNR in dB, ``10·log10(1 / MSE)`` over the whole split (higher is better; computed
from the split's mean squared error, not averaged per batch); the loss is the MSE.

Model: :class:`CoordMLP` — fixed Fourier features of the coordinates (``x``, and
``sin(2^k π x)``, ``cos(2^k π x)`` for k < ``frequencies``, per coordinate), then ``depth``
hidden ``Linear → activation`` layers of width ``hidden`` and a linear output: 3 ReLU sites by
default. The default search space adds ``sin`` and ``cos`` to the paper's unary ops
(:data:`grafs.ops.EXTRA_UNARY`).

Default budgets and what they gave (seed 0; CPU time of one torch thread, measured on a shared
2-core machine under heavy load, where wall times were 3–8× longer):

* evaluation (100 epochs of Adam, batch 256, 1300 steps): 5–8 s. Test PSNR: ReLU 28.8 dB,
  LeakyReLU 27.9, GELU 24.5, Tanh 24.3, ELU 23.8, SiLU 23.2; sin(x) 23.3, sin(3x) 26.4 and
  sin(10x) 8.8 (it memorises the training pixels: 103 dB there). Smooth activations underfit,
  high-frequency ones overfit: the activation decides the result.
* search (30 epochs of 19 steps, batch 128, arch_lr 1e-2, warm start 5, drops from epoch 10):
  31 s; found ``0.68*tanh(0.65*abs(x) + 0.35*silu(x)) + 0.32*silu(x)``, 27.7 dB when evaluated.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models.common import check_activation_factory, make_activation
from grafs.ops import EXTRA_UNARY
from grafs.tasks._skimage import BUNDLED, load_gray
from grafs.searching.losses import mse
from grafs.tasks.base import Task, apply_overrides, check_option
from grafs.searching.config import SearchConfig, TrainConfig

__all__ = ["CoordMLP", "load_inr", "make_inr_task", "mse", "psnr", "psnr_of_mse",
           "pixel_coordinates", "DATA_DEFAULTS"]

#: data/model options accepted by ``get_task("inr", **options)`` and their defaults.
DATA_DEFAULTS: dict[str, Any] = {
    "image": "camera",
    "size": 64,               # the image is resized to size × size pixels
    "test_fraction": 0.2,     # held-out pixels
    "split_seed": 0,
    "frequencies": 4,         # Fourier-feature octaves per coordinate (0: raw coordinates)
    "hidden": 64,
    "depth": 3,               # hidden layers = activation sites
}


def psnr_of_mse(m: float | torch.Tensor) -> float:
    """PSNR in dB of a mean squared error on intensities in [0, 1] (peak 1)."""
    return 10.0 * math.log10(1.0 / max(float(m), 1e-12))


def psnr(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of one batch (``Task.evaluate`` computes a split's from the split's MSE)."""
    return torch.tensor(psnr_of_mse(mse(out.detach(), target)))


def _split_psnr(averages: dict[str, float]) -> float:
    return psnr_of_mse(averages["loss"])


def pixel_coordinates(size: int) -> torch.Tensor:
    """(size², 2) pixel centres (row, column) in [-1, 1], row-major."""
    c = (2.0 * torch.arange(size, dtype=torch.float64) + 1.0) / size - 1.0
    rows, cols = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).float()


class CoordMLP(nn.Module):
    """Fourier features of 2-D coordinates, ``depth`` × (Linear → activation), Linear → 1."""

    def __init__(self, frequencies: int = 4, hidden: int = 64, depth: int = 3,
                 activation=nn.ReLU):
        super().__init__()
        activation = check_activation_factory(activation, nn.ReLU)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(frequencies,
                                                                     dtype=torch.float32))
        width = 2 + 4 * frequencies
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), make_activation(activation)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def features(self, xy: torch.Tensor) -> torch.Tensor:
        if xy.dim() != 2 or xy.shape[1] != 2:
            raise GrafsError(f"CoordMLP expects (B, 2) coordinates, got {tuple(xy.shape)}")
        if not len(self.freqs):
            return xy
        ang = (xy[:, :, None] * self.freqs.to(xy.dtype)).flatten(1)
        return torch.cat([xy, torch.sin(ang), torch.cos(ang)], dim=1)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(xy))


@functools.lru_cache(maxsize=8)
def _load(image: str, size: int, test_fraction: float, split_seed: int):
    from skimage.transform import resize
    img = resize(load_gray(image), (size, size), order=1, anti_aliasing=True,
                 preserve_range=True).clip(0.0, 1.0)
    values = torch.tensor(img.reshape(-1, 1), dtype=torch.float32)
    coords = pixel_coordinates(size)
    n = size * size
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(test_fraction * n))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return coords[train_idx], values[train_idx], coords[test_idx], values[test_idx], values


def _check(opts: dict[str, Any]) -> None:
    if opts["image"] not in BUNDLED:
        raise GrafsError(f"inr: unknown image {opts['image']!r}; bundled images: "
                         f"{', '.join(sorted(BUNDLED))}")
    check_option("inr", "size", opts["size"], minimum=4)
    tf = opts["test_fraction"]
    if not isinstance(tf, (int, float)) or isinstance(tf, bool) or not 0.05 <= tf <= 0.9:
        raise GrafsError(f"inr test_fraction must be in [0.05, 0.9], got {tf!r}")
    check_option("inr", "split_seed", opts["split_seed"], minimum=0)
    check_option("inr", "frequencies", opts["frequencies"], minimum=0)
    check_option("inr", "hidden", opts["hidden"])
    check_option("inr", "depth", opts["depth"])
    if opts["frequencies"] > 12:
        raise GrafsError(f"inr frequencies must be <= 12 (2^11 π is far above any image's "
                         f"Nyquist rate), got {opts['frequencies']!r}")


def load_inr(image: str = "camera", size: int = 64, test_fraction: float = 0.2,
             split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_xy (N, 2), train_v (N, 1), test_xy, test_v)`` float32, fresh tensors."""
    _check({**DATA_DEFAULTS, "image": image, "size": size, "test_fraction": test_fraction,
            "split_seed": split_seed})
    out = _load(image, size, float(test_fraction), split_seed)
    return tuple(t.clone() for t in out[:4])  # type: ignore[return-value]


# 19 steps per epoch; 100 arch steps in the warm start and 190 before the first drop, with a
# larger arch_lr than the image tasks: with 10 epochs at 3e-3, α was still uniform at the
# first drop (the search's GrafsWarning), with 1e-2 it was not. Every built-in task uses the
# same recipe, arch_lr 3e-2 with op normalisation (docs/results-teacher.md)
SEARCH_DEFAULTS = SearchConfig(
    epochs=30, batch_size=128, optimizer="adam", lr=2e-3, weight_decay=0.0,
    schedule="cosine", min_lr=1e-4,
    arch_lr=3e-2, arch_weight_decay=1e-3, warmstart_epochs=5, shrink_start_epoch=10,
    train_fraction=0.75, normalize=True)

EVAL_DEFAULTS = TrainConfig(
    epochs=100, batch_size=256, optimizer="adam", lr=2e-3, weight_decay=0.0,
    schedule="cosine", min_lr=1e-4)


def _build_model(activation, *, frequencies: int, hidden: int, depth: int) -> nn.Module:
    return CoordMLP(frequencies, hidden, depth, activation)


def _search_space():
    from grafs.runtime.space import SearchSpace
    return SearchSpace.grafs(extra_unary=EXTRA_UNARY)


def make_inr_task(seed: int = 0, **overrides: Any) -> Task:
    search, evaluation, opts = apply_overrides("inr", SEARCH_DEFAULTS, EVAL_DEFAULTS,
                                               DATA_DEFAULTS, overrides)
    _check(opts)
    train_x, train_y, test_x, test_y = load_inr(opts["image"], opts["size"],
                                                opts["test_fraction"], opts["split_seed"])
    size, k, hidden, depth = opts["size"], opts["frequencies"], opts["hidden"], opts["depth"]
    return Task(
        name="inr",
        description=(f"implicit neural representation of scikit-image's {opts['image']!r} "
                     f"({size}x{size}, {len(train_x)} train / {len(test_x)} held-out pixels), "
                     f"coordinate MLP ({k} Fourier octaves, {depth}x{hidden}), ReLU; "
                     f"metric: test PSNR"),
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        model_builder=functools.partial(_build_model, frequencies=k, hidden=hidden, depth=depth),
        default_activation=nn.ReLU, activation_types=(nn.ReLU,),
        search_config=search, eval_config=evaluation,
        loss_fn=mse, metric=psnr, metric_name="psnr", higher_is_better=True,
        split_metrics={"psnr": _split_psnr}, search_space=_search_space,
        num_classes=0, seed=seed,
        info={"source": f"skimage/data/{BUNDLED[opts['image']]}", **opts},
    )
