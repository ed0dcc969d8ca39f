"""Shared timing helpers for the bench/ scripts (medians of repeated fwd+bwd, same run)."""
from __future__ import annotations

import statistics
import time

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_fwd_bwd(fn, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of y = fn(x); y.backward(g) (x requires grad; grad reset each time)."""
    g = torch.ones_like(x)
    dev = x.device
    for _ in range(warmup):
        x.grad = None
        fn(x).backward(g)
    sync(dev)
    times = []
    for _ in range(repeats):
        x.grad = None
        sync(dev)
        t = time.perf_counter()
        fn(x).backward(g)
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep] + [fmt(r) for r in rows])
