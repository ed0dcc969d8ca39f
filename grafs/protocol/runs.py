"""The evaluation protocol's training runs (one activation, one seed each): in this process or
in ``jobs`` spawned worker processes, with an optional per-run result cache; under torchrun
(a ``torch.distributed`` process group) spread over every rank of every node.

Every run is a function of its (activation, seed) alone: the model is built and trained from
``seed`` and the global torch RNG (dropout) is seeded with it inside a forked RNG state, so a
run gives the same score whichever process runs it and in whichever order (given the same
torch thread count: workers get the caller's threads split between them). A run that raises is
reported as failed and the others are kept; with a cache directory, every finished run is
written to ``<cache>/runs/<key>.json`` (the key hashes everything the result depends on) and a
later call skips it.

Across ranks (``torchrun --nnodes N --nproc-per-node M -m grafs evaluate``): rank 0 reads the
cache and tells every rank which runs are left; rank r trains every world-th of them (on
``cuda:LOCAL_RANK`` for a CUDA device without an index) and caches what it trains; then every
rank gets every result (rank 0 also caches the others' runs where its cache lacks them), so
every rank returns the whole table. A run that raises, or a rank whose share cannot start,
is a failed run in the table: the ranks still meet, none waits for ever.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import math
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from grafs.errors import GrafsError, GrafsWarning
from grafs.files import atomic_write_json, write_error
from grafs.protocol.baselines import activation_factory


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``formula`` is a formula, or a baseline's name when ``baseline``."""
    index: int
    name: str
    formula: str
    seed: int
    baseline: bool = False


@dataclass
class RunResult:
    spec: RunSpec
    score: float | None = None
    seconds: float = 0.0
    train_loss: list[float] = field(default_factory=list)
    error: str | None = None      #: why the run failed (None: it succeeded)
    cached: bool = False          #: read from the cache, not run now


def train_and_evaluate(task, factory, seed: int, device: torch.device, *, cfg=None,
                       data=None, split="test", max_steps: int | None = None
                       ) -> tuple[dict[str, float], dict[str, list[float]], float]:
    """One run from scratch: ``task``'s model with the activations of ``factory``, trained with
    ``cfg`` (default: the task's evaluation config) on ``data`` (default: its training data),
    evaluated on ``split``; returns (metrics, fit history, training seconds). Seeded with
    ``seed`` in a forked global RNG, so what the model draws from it (dropout) does not depend
    on what ran before and the caller's RNG state is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = task.make_model(factory, seed=seed).to(device)
        t0 = time.perf_counter()
        fit = task.fit(model, cfg, seed=seed, device=device, max_steps=max_steps, data=data)
        seconds = time.perf_counter() - t0
        return task.evaluate(model, split, device=device), fit, seconds


def run_one(task, spec: RunSpec, cfg, backend: str, device: torch.device,
            max_steps: int | None) -> RunResult:
    """Train and test one model; an exception becomes a failed :class:`RunResult`."""
    try:
        metrics, fit, seconds = train_and_evaluate(task, activation_factory(spec.formula, backend, baseline=spec.baseline), spec.seed,
                                                   device, cfg=cfg, max_steps=max_steps)
        score = float(metrics[task.metric_name])
        if not math.isfinite(score):      # (an activation that overflows on the test inputs)
            return RunResult(spec, error=f"the test {task.metric_name} is not finite ({score})")
        return RunResult(spec, score, seconds, [float(v) for v in fit["train_loss"]])
    except Exception as err:  # noqa: BLE001 - reported with the table, the other runs go on
        return RunResult(spec, error=f"{type(err).__name__}: {err}")


# -- the cache ---------------------------------------------------------------------------------
def run_key(task, spec: RunSpec, cfg, backend: str, device: torch.device,
            max_steps: int | None) -> str:
    """What a run's result depends on, hashed (the activation's display name is not part of it,
    nor are the task's search settings: a training run from scratch does not read them)."""
    summary = {k: v for k, v in task.summary().items() if k not in ("search_config", "search_space")}
    what = {"task": summary, "train": cfg.to_dict(), "formula": spec.formula,
            "baseline": spec.baseline, "seed": spec.seed, "max_steps": max_steps,
            "backend": None if spec.baseline else backend, "device": device.type,
            # another grafs or torch may build, initialise or train the model otherwise
            "versions": [_grafs_version(), torch.__version__]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _grafs_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("grafs")
    except PackageNotFoundError:      # (a source tree on the path, not installed)
        return "unknown"


def _cache_read(path: Path, spec: RunSpec) -> RunResult | None:
    """The cached result of ``spec``, or None when the entry is missing or unusable (empty,
    truncated, corrupt, another run's, unreadable): the run is then done again."""
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
        if (d["formula"], d["seed"], d["baseline"]) != (spec.formula, spec.seed, spec.baseline):
            return None     # another run's entry under this name
        if not math.isfinite(float(d["score"])):
            return None     # (written by an older grafs, which kept such runs)
        return RunResult(spec, float(d["score"]), float(d["seconds"]),
                         [float(v) for v in d["train_loss"]], cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cache_write(path: Path, r: RunResult) -> None:
    """Cache a finished run; a failed write (disk full, a read-only directory) is a warning:
    the run's result is kept, a later call runs it again."""
    advice = "the evaluation goes on without caching this run (a later one runs it again)"
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(path.parent, "the evaluation cache directory", err, advice) from None
        atomic_write_json(path, {**asdict(r.spec), "score": r.score, "seconds": r.seconds,
                                 "train_loss": r.train_loss}, "the evaluation cache entry",
                          advice, indent=1)
    except GrafsError as err:
        warnings.warn(str(err), GrafsWarning, stacklevel=2)


# -- worker processes --------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(task, devices, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["task"] = task
    _WORKER["device"] = devices.get()     # one device per worker


def _work(spec: RunSpec, cfg, backend: str, max_steps: int | None) -> RunResult:
    return run_one(_WORKER["task"], spec, cfg, backend, _WORKER["device"], max_steps)


def worker_devices(device: torch.device, jobs: int) -> list[torch.device]:
    """The device of each worker: round robin over the GPUs when ``device`` is CUDA without an
    index and there are several, else ``device`` for all."""
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i % torch.cuda.device_count()) for i in range(jobs)]
    return [device] * jobs


def run_all(task, specs: Sequence[RunSpec], cfg, backend: str, device: torch.device,
            max_steps: int | None = None, jobs: int = 1, cache_dir: str | os.PathLike | None = None,
            on_result: Callable[[RunResult], None] | None = None,
            distributed: bool | None = None) -> list[RunResult]:
    """Every run of ``specs`` (cached ones read back), results in the order of ``specs``;
    ``on_result`` sees each result in that order as soon as it and all before it are done.
    ``distributed``: spread the runs over the ranks of a torch.distributed process group (None:
    if one of several processes is initialised; True: also initialise it from torchrun's
    environment; False: never)."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise GrafsError(f"jobs must be an int >= 1, got {jobs!r}")
    from grafs.searching import distributed as gdist
    dist = gdist.context(distributed, device, explicit_device=True)
    if dist is not None:
        return _run_ranks(task, specs, cfg, backend, dist, max_steps, jobs, cache_dir, on_result)
    results: dict[int, RunResult] = {}
    paths: dict[int, Path] = {}
    emitted = 0

    def done(r: RunResult) -> None:
        nonlocal emitted
        results[r.spec.index] = r
        if r.error is None and not r.cached and r.spec.index in paths:
            _cache_write(paths[r.spec.index], r)
        while emitted < len(specs) and specs[emitted].index in results:
            if on_result is not None:
                on_result(results[specs[emitted].index])
            emitted += 1

    todo = []
    for spec in specs:
        if cache_dir is not None:
            key = run_key(task, spec, cfg, backend, device, max_steps)
            paths[spec.index] = Path(cache_dir) / "runs" / f"{key}.json"
            hit = _cache_read(paths[spec.index], spec)
            if hit is not None:
                done(hit)
                continue
        todo.append(spec)
    if jobs == 1 or len(todo) <= 1:
        for spec in todo:
            done(run_one(task, spec, cfg, backend, device, max_steps))
    else:
        _run_pool(task, todo, cfg, backend, device, max_steps, min(jobs, len(todo)), done)
    return [results[s.index] for s in specs]


def _run_pool(task, todo, cfg, backend, device, max_steps, jobs, done) -> None:
    import pickle
    import torch.multiprocessing as mp
    try:
        pickle.dumps(task)
    except Exception as err:  # noqa: BLE001 - any pickling failure means the same to the user
        raise GrafsError(f"jobs > 1 sends the task to worker processes, but task {task.name!r} "
                         f"cannot be pickled ({err}); use a built-in task, a model builder "
                         f"defined at module level (not a lambda), or jobs=1") from None
    ctx = mp.get_context("spawn")   # CUDA cannot be used in forked children
    devices = ctx.Queue()
    for d in worker_devices(device, jobs):
        devices.put(d)
    threads = max(1, torch.get_num_threads() // jobs)
    with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                initargs=(task, devices, threads)) as pool:
        futures = {pool.submit(_work, spec, cfg, backend, max_steps): spec for spec in todo}
        for fut in cf.as_completed(futures):
            try:
                r = fut.result()
            except Exception as err:  # noqa: BLE001 - a worker that died (killed, out of memory)
                r = RunResult(futures[fut], error=f"worker process failed: {type(err).__name__}: {err}")
            done(r)


def _run_ranks(task, specs, cfg, backend, dist, max_steps, jobs, cache_dir, on_result):
    """:func:`run_all` over the ranks of ``dist`` (a grafs.searching.distributed.Dist)."""
    import torch.distributed as tdist
    device = dist.device
    paths = {} if cache_dir is None else {
        s.index: Path(cache_dir) / "runs" / f"{run_key(task, s, cfg, backend, device, max_steps)}.json"
        for s in specs}
    # rank 0's cache decides which runs are left, for every rank
    box: list = [None]
    if dist.rank == 0:
        box[0] = [hit for s in specs if s.index in paths
                  for hit in [_cache_read(paths[s.index], s)] if hit is not None]
    tdist.broadcast_object_list(box, src=0, device=dist.comm_device)
    results = {r.spec.index: r for r in box[0]}
    todo = [s for s in specs if s.index not in results]
    mine = todo[dist.rank::dist.world_size]
    ran: dict[int, RunResult] = {}

    def finished(r: RunResult) -> None:
        ran[r.spec.index] = r
        if r.error is None and r.spec.index in paths:
            _cache_write(paths[r.spec.index], r)
    try:
        if jobs == 1 or len(mine) <= 1:
            for spec in mine:
                finished(run_one(task, spec, cfg, backend, device, max_steps))
        else:
            _run_pool(task, mine, cfg, backend, device, max_steps, min(jobs, len(mine)), finished)
    except Exception as err:  # noqa: BLE001 - this rank's share fails, the ranks still meet
        for spec in mine:
            if spec.index not in ran:
                ran[spec.index] = RunResult(spec, error=f"rank {dist.rank} of {dist.world_size} "
                                                        f"failed: {type(err).__name__}: {err}")
    shares: list = [None] * dist.world_size
    tdist.all_gather_object(shares, list(ran.values()))
    for rank, share in enumerate(shares):
        for r in share:
            results[r.spec.index] = r
            if (dist.rank == 0 and rank != 0 and r.error is None and r.spec.index in paths
                    and not paths[r.spec.index].exists()):   # another node's disk
                _cache_write(paths[r.spec.index], r)
    ordered = [results[s.index] for s in specs]
    if on_result is not None:
        for r in ordered:
            on_result(r)
    return ordered
