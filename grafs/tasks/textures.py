"""Textures: 32×32 grayscale patches of real photographs shipped inside scikit-image.

Classes (default): ``brick``, ``grass``, ``gravel``, ``moon`` (lunar surface),
``immunohistochemistry`` (stained tissue) and ``coffee`` (a cup on a wooden table) — the
PNG files in ``skimage/data`` that are bundled with the package (read from disk by
:mod:`grafs.tasks._skimage`; nothing is downloaded). RGB images are converted to luminance.

Split by image region, so no pixel is shared between train and test: in every image the
columns left of ``(1 − test_fraction)·width`` give the training patches, the columns right of
it the test patches. Windows of 32·s source pixels at scales s ∈ ``scales`` are cut on a grid
with a stride of ``stride``·s source pixels (training windows overlap each other, never a test
window), block-averaged down to 32×32, turned by one of the 8 symmetries of the square (drawn
per patch) so orientation is no cue, and standardised per patch (mean 0, std 1) so brightness
and contrast are no cue either; ``noise`` adds Gaussian noise of that std afterwards. At most
``train_per_class`` / ``test_per_class`` patches per class are kept (a random subset).
All of it is drawn from ``split_seed``: the data are the same for every task seed.
Tensors: x (N, 1, 32, 32) float32, y (N,) int64.

Model: ResNet20 (three stages of 3 BasicBlocks, 19 ReLU sites) with stage widths
(``width``, 2·``width``, 4·``width``); the paper's is width 16, the default here is 4 so a
CPU evaluation run stays near 40 s.

Default budgets and what they gave (seed 0; CPU time of one torch thread, measured on a shared
2-core machine under heavy load, where wall times were 3–6× longer):

* evaluation (10 epochs of SGD over 1800 patches): 36–51 s. Test accuracy (1200 patches):
  ReLU 0.846, GELU 0.847, SiLU 0.785 (with width 8 and 6 epochs: 0.747, 0.772, 0.809).
* search (10 epochs of 12 steps of 32; 7 since 2026-12-07, ``SEARCH_DEFAULTS``): 157 s; the network reached 0.60 validation
  accuracy and α was still about uniform at the first drop (see ``SEARCH_DEFAULTS``). Found
  ``0.46*relu(0.53*relu(x) + 0.47*sqrt(max(x, 0.001))) + 0.54*gelu(x)``: 0.856 when evaluated
  (74 s: a formula through grafs' eager backend costs more than a native module).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models.resnet import CifarResNet
from grafs.tasks._skimage import BUNDLED, load_gray
from grafs.tasks.base import Task, apply_overrides, check_option
from grafs.searching.config import SearchConfig, TrainConfig

__all__ = ["load_textures", "patch_boxes", "make_textures_task", "DATA_DEFAULTS", "PATCH"]

PATCH = 32

#: data/model options accepted by ``get_task("textures", **options)`` and their defaults.
DATA_DEFAULTS: dict[str, Any] = {
    "classes": ("brick", "grass", "gravel", "moon", "immunohistochemistry", "coffee"),
    "scales": (1, 2),          # window sizes 32·s source pixels, block-averaged to 32×32
    "stride": 16,              # grid stride in output pixels (16·s source pixels)
    "test_fraction": 0.25,     # the right-hand share of every image's columns
    "train_per_class": 300,
    "test_per_class": 200,
    "noise": 0.0,              # std of Gaussian noise added after per-patch standardisation
    "split_seed": 0,
    "width": 4,                # ResNet20 stage widths (width, 2·width, 4·width); the paper's: 16
}


def patch_boxes(shape: tuple[int, int], scales: Sequence[int], stride: int, test_fraction: float
                ) -> dict[str, list[tuple[int, int, int]]]:
    """``{"train": [(y0, x0, size), …], "test": […]}``: the windows (in source pixels) of an
    image of ``shape`` before subsampling; train windows lie left of the split column, test
    windows right of it."""
    h, w = shape
    split = int(round(w * (1.0 - test_fraction)))
    out: dict[str, list[tuple[int, int, int]]] = {"train": [], "test": []}
    for s in scales:
        size, step = PATCH * s, stride * s
        for part, lo, hi in (("train", 0, split), ("test", split, w)):
            for y0 in range(0, h - size + 1, step):
                for x0 in range(lo, hi - size + 1, step):
                    out[part].append((y0, x0, size))
    return out


def _cut(img: np.ndarray, boxes: list[tuple[int, int, int]]) -> np.ndarray:
    """(N, 32, 32) block-averaged windows."""
    out = np.empty((len(boxes), PATCH, PATCH), dtype=np.float64)
    for i, (y0, x0, size) in enumerate(boxes):
        s = size // PATCH
        win = img[y0:y0 + size, x0:x0 + size]
        out[i] = win.reshape(PATCH, s, PATCH, s).mean(axis=(1, 3))
    return out


def _dihedral(p: np.ndarray, k: int) -> np.ndarray:
    p = np.rot90(p, k % 4)
    return p[:, ::-1] if k >= 4 else p


@functools.lru_cache(maxsize=8)
def _load(classes: tuple[str, ...], scales: tuple[int, ...], stride: int, test_fraction: float,
          train_per_class: int, test_per_class: int, noise: float, split_seed: int):
    rng = np.random.RandomState(split_seed)
    parts: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "test": ([], [], [])}
    for label, name in enumerate(classes):
        img = load_gray(name)
        boxes = patch_boxes(img.shape, scales, stride, test_fraction)
        for part, cap in (("train", train_per_class), ("test", test_per_class)):
            bx = boxes[part]
            if not bx:
                raise GrafsError(f"textures: image {name!r} {img.shape} has no {part} window of "
                                 f"{PATCH}·{max(scales)} pixels with test_fraction {test_fraction}")
            keep = np.sort(rng.permutation(len(bx))[:cap])
            chosen = [bx[i] for i in keep]
            patches = _cut(img, chosen)
            ks = rng.randint(0, 8, size=len(patches))
            patches = np.stack([_dihedral(p, k) for p, k in zip(patches, ks)])
            mean = patches.mean(axis=(1, 2), keepdims=True)
            std = patches.std(axis=(1, 2), keepdims=True)
            patches = (patches - mean) / np.maximum(std, 1e-3)
            if noise:
                patches = patches + noise * rng.standard_normal(patches.shape)
            xs, ys, bs = parts[part]
            xs.append(patches)
            ys.append(np.full(len(patches), label, dtype=np.int64))
            bs += [(label, *b) for b in chosen]
    out = []
    for part in ("train", "test"):
        xs, ys, bs = parts[part]
        x = np.concatenate(xs).astype(np.float32)[:, None]
        y = np.concatenate(ys)
        order = rng.permutation(len(y))          # mix classes within batches
        x, y = x[order], y[order]
        x.setflags(write=False)
        y.setflags(write=False)
        out += [x, y, tuple(bs[i] for i in order)]
    return tuple(out)


def _check_options(opts: dict[str, Any]) -> dict[str, Any]:
    classes = opts["classes"]
    if isinstance(classes, str) or not isinstance(classes, (tuple, list)) or len(classes) < 2:
        raise GrafsError(f"textures classes must be a list of at least 2 image names, got {classes!r}")
    for c in classes:
        if c not in BUNDLED:
            raise GrafsError(f"textures: unknown image {c!r}; bundled images: "
                             f"{', '.join(sorted(BUNDLED))}")
    if len(set(classes)) != len(classes):
        raise GrafsError(f"textures classes contain duplicates: {classes!r}")
    scales = opts["scales"]
    if (not isinstance(scales, (tuple, list)) or not scales
            or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in scales)):
        raise GrafsError(f"textures scales must be a non-empty list of ints >= 1, got {scales!r}")
    tf = opts["test_fraction"]
    if not isinstance(tf, (int, float)) or isinstance(tf, bool) or not 0.05 <= tf <= 0.5:
        raise GrafsError(f"textures test_fraction must be in [0.05, 0.5], got {tf!r}")
    noise = opts["noise"]
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise < 100:
        raise GrafsError(f"textures noise must be a number in [0, 100), got {noise!r}")
    for name in ("stride", "train_per_class", "test_per_class", "width"):
        check_option("textures", name, opts[name])
    check_option("textures", "split_seed", opts["split_seed"], minimum=0)
    return {**opts, "classes": tuple(classes), "scales": tuple(int(s) for s in scales),
            "test_fraction": float(tf), "noise": float(noise)}


def load_textures(**options: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x (N,1,32,32) float32, train_y (N,) int64, test_x, test_y)``, fresh tensors;
    ``options``: the data options of :data:`DATA_DEFAULTS`."""
    opts = _check_options({**DATA_DEFAULTS, **{k: v for k, v in options.items() if k != "width"}})
    xtr, ytr, _, xte, yte, _ = _load(*(opts[k] for k in (
        "classes", "scales", "stride", "test_fraction", "train_per_class", "test_per_class",
        "noise", "split_seed")))
    return torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte)


# Sized for about 3 CPU minutes: a cell call at 110 ops costs ~16x a plain step here (19 sites
# of 32x32 maps), so 12 steps of 32 per epoch. 48 arch steps before the first drop, with a
# larger arch_lr than the paper's; still too few: α is about uniform at the first drop (the
# search's GrafsWarning; lowest hole entropy 0.9976, 0.9998 with warm start 1, drops from
# epoch 2 and arch_lr 3e-3). A search where α learns needs more steps than 3 CPU minutes give.
# Like every built-in task: arch_lr 3e-2 with op normalisation (docs/results-teacher.md).
# 7 epochs with drops from epoch 3, not 10 from 4: over six search seeds the found formulas
# were as good (or as poor: none beats a baseline either way, mean 0.654 against 0.625) for
# 1.15–1.26 evaluation runs instead of 1.74–1.89 (docs/results-textures.md, issue 30).
SEARCH_DEFAULTS = SearchConfig(
    epochs=7, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4,
    schedule="cosine", min_lr=0.0, max_steps_per_epoch=12,
    arch_lr=3e-2, arch_weight_decay=1e-3, warmstart_epochs=2, shrink_start_epoch=3,
    train_fraction=0.75, normalize=True)

EVAL_DEFAULTS = TrainConfig(
    epochs=10, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4,
    schedule="cosine", min_lr=0.0)


def _build_model(activation, *, num_classes: int, width: int) -> nn.Module:
    return CifarResNet(20, num_classes, 1, activation, widths=(width, 2 * width, 4 * width))


def make_textures_task(seed: int = 0, **overrides: Any) -> Task:
    search, evaluation, opts = apply_overrides("textures", SEARCH_DEFAULTS, EVAL_DEFAULTS,
                                               DATA_DEFAULTS, overrides)
    opts = _check_options(opts)
    train_x, train_y, test_x, test_y = load_textures(**opts)
    n_cls = len(opts["classes"])
    return Task(
        name="textures",
        description=(f"texture patches from scikit-image's bundled photographs ({n_cls} classes, "
                     f"32x32 gray, {len(train_x)} train / {len(test_x)} test, split by image "
                     f"region), ResNet20 (widths {opts['width']}/{2 * opts['width']}/"
                     f"{4 * opts['width']}), ReLU"),
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        model_builder=functools.partial(_build_model, num_classes=n_cls, width=opts["width"]),
        default_activation=nn.ReLU, activation_types=(nn.ReLU,),
        search_config=search, eval_config=evaluation,
        metric_name="accuracy", higher_is_better=True, num_classes=n_cls, seed=seed,
        info={"source": "skimage/data (bundled PNGs)", **{k: (",".join(map(str, v))
              if isinstance(v, tuple) else v) for k, v in opts.items()}},
    )
