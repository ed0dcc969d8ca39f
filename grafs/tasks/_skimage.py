"""Images that ship inside the scikit-image package (``skimage/data/*.png``), read from disk.

The files are opened directly from the installed package's data folder, never through
``skimage.data.<name>()``: with ``pooch`` installed that function may look in (and download
to) a cache first, and grafs tasks must never touch the network. Only these bundled images
are used; ``skimage.data`` images that need a download (e.g. ``eagle``) are not offered.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from grafs.errors import GrafsError

__all__ = ["BUNDLED", "load_gray"]

#: bundled images offered to the tasks: name -> file inside skimage/data
BUNDLED: dict[str, str] = {
    **{name: f"{name}.png" for name in ("brick", "grass", "gravel", "camera", "moon", "coins",
                                        "page", "text", "cell", "clock", "astronaut", "coffee",
                                        "chelsea")},
    "immunohistochemistry": "ihc.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
}


def _data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GrafsError("this task needs scikit-image's bundled images: "
                         "pip install scikit-image (or grafs[tasks])") from exc
    return Path(skimage.data.__file__).parent


@functools.lru_cache(maxsize=32)
def _load(name: str) -> np.ndarray:
    from skimage.color import rgb2gray
    from skimage.io import imread

    path = _data_dir() / BUNDLED[name]
    if not path.is_file():
        raise GrafsError(f"scikit-image's bundled image {path.name!r} is missing from {path.parent}; "
                         f"reinstall scikit-image (grafs never downloads data)")
    img = np.asarray(imread(path))
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])          # float in [0, 1]
    else:
        img = img.astype(np.float64) / 255.0
    img = np.ascontiguousarray(img, dtype=np.float64)
    img.setflags(write=False)
    return img


def load_gray(name: str) -> np.ndarray:
    """The bundled image ``name`` as a read-only float64 (H, W) array in [0, 1] (RGB → luminance)."""
    if name not in BUNDLED:
        raise GrafsError(f"unknown bundled scikit-image image {name!r}; "
                         f"known: {', '.join(sorted(BUNDLED))}")
    return _load(name)
