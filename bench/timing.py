"""Timing helpers shared by the bench modules: the device, medians of repeated calls measured
in the same run, the first (compiling) call, and a markdown table."""
from __future__ import annotations

import statistics
import time

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_fwd_bwd(fn, x: torch.Tensor, repeats: int = 20, warmup: int = 3,
                 g: torch.Tensor | None = None) -> float:
    """Median seconds of ``fn(x).backward(g)`` (x requires grad; its grad reset each time;
    ``g`` defaults to ones), after ``warmup`` untimed calls."""
    g = torch.ones_like(x) if g is None else g
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


def first_call(fn, x: torch.Tensor) -> float:
    """Seconds of the first ``fn(x).backward(ones)`` (compiles, builds plans), device synced."""
    dev = x.device
    sync(dev)
    t = time.perf_counter()
    fn(x).backward(torch.ones_like(x))
    sync(dev)
    return time.perf_counter() - t


def round_robin(fns, dev: torch.device, warmup: int, repeats: int) -> list[float]:
    """Median seconds of each ``fn()``; the repeats are interleaved (one call of each per
    round) so that drifting machine load affects every function alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync(dev)
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            sync(dev)
            samples[k].append(time.perf_counter() - t)
    return [statistics.median(s) for s in samples]


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep] + [fmt(r) for r in rows])
