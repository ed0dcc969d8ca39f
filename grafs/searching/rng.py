"""Random-number state of every library a search draws from: capture, restore, seed."""
from __future__ import annotations

import json
import random

import numpy as np
import torch


#: the generators every saved RNG state holds (and "cuda" where CUDA is available)
RNG_KEYS = ("torch", "numpy", "python")


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": json.dumps(_np_state()),
          "python": json.dumps(random.getstate(), default=list)}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _np_state():
    s = np.random.get_state()
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def set_rng_state(st: dict) -> None:
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
