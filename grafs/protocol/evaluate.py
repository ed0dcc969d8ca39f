"""The evaluation protocol of seeds/001 §4.1: train from scratch with each activation over n
seeds and report mean ± standard error of the mean, plus the search/evaluation time ratio."""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.protocol.baselines import (BASELINE_OPS, BASELINES, activation_factory,  # noqa: F401
                                      baseline_names, scaled_baselines)

@dataclass
class EvalRow:
    name: str
    formula: str
    scores: list[float]
    seconds: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores) if self.scores else float("nan")  # nan: all failed

    @property
    def sem(self) -> float:
        n = len(self.scores)
        if n < 2 or not all(map(math.isfinite, self.scores)):
            return float("nan")
        return statistics.stdev(self.scores) / math.sqrt(n)


@dataclass
class EvalTable:
    task: str
    metric: str
    higher_is_better: bool
    rows: list[EvalRow]
    search_seconds: float | None = None
    settings: dict = field(default_factory=dict)
    #: runs that raised: {"name", "formula", "seed", "error"}; their rows lack those seeds
    failures: list[dict] = field(default_factory=list)

    @property
    def eval_seconds(self) -> float:
        """Mean wall time of one evaluation run (one activation, one seed)."""
        secs = [s for r in self.rows for s in r.seconds]
        return statistics.fmean(secs) if secs else float("nan")

    @property
    def search_eval_ratio(self) -> float | None:
        return None if not self.search_seconds else self.search_seconds / self.eval_seconds

    def best(self) -> EvalRow | None:
        key = (lambda r: r.mean) if self.higher_is_better else (lambda r: -r.mean)
        return max((r for r in self.rows if r.scores), key=key, default=None)

    def markdown(self, digits: int = 4) -> str:
        best = self.best()
        n = max((len(r.scores) for r in self.rows), default=0)
        lines = [f"| activation | {self.metric} (mean ± SEM, n={n}) | formula |",
                 "|---|---|---|"]
        for r in self.rows:
            cell = ("failed" if not r.scores else f"{r.mean:.{digits}f}" if len(r.scores) == 1
                    else f"{r.mean:.{digits}f} ± {r.sem:.{digits}f}")   # (one seed: no SEM)
            if r is best:
                cell = f"**{cell}**"
            if 0 < len(r.scores) < n:
                cell += f" (n={len(r.scores)})"
            lines.append(f"| {r.name} | {cell} | `{r.formula}` |")
        if self.failures:
            lines.append("")
            lines.extend(f"failed: {f['name']} seed {f['seed']}: {f['error']}" for f in self.failures)
        if self.search_eval_ratio is not None:
            lines.append("")
            lines.append(f"search time / evaluation time = {self.search_seconds:.1f} s / "
                         f"{self.eval_seconds:.1f} s = **{self.search_eval_ratio:.2f}**")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "search_seconds": self.search_seconds, "eval_seconds": self.eval_seconds,
                "rows": [{"name": r.name, "formula": r.formula, "scores": r.scores,
                          "seconds": r.seconds, "mean": r.mean, "sem": r.sem} for r in self.rows],
                "settings": self.settings, "failures": self.failures}


def from_scratch_problem(task, formula: str, *, seed: int = 0, steps: int = 5) -> str | None:
    """What stops ``formula`` from training on ``task`` from scratch, or None: one forward and
    backward pass of a freshly initialised model (the evaluation's, seeded ``seed``) on a
    training batch, checked for a non-finite loss or gradient, then the first ``steps`` steps
    of the evaluation's own training loop (its optimizer and schedule), checked for a
    non-finite loss. A search trains through clipped ops on warm-started weights, so a found
    formula can still overflow at initialisation (``sinh`` stacked over 19 ResNet sites:
    docs/results-textures.md) or blow up within a few steps (an x²-growing formula on digits:
    docs/results-digits.md). Seeded with ``seed`` in a forked CPU RNG (the check runs on the
    CPU): what the model draws from it (dropout) depends on ``seed`` alone, and the caller's
    RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)     # (the CPU's only: nothing else to restore)
        return _from_scratch_problem(task, formula, seed, steps)


def _from_scratch_problem(task, formula: str, seed: int, steps: int) -> str | None:
    from grafs.errors import GrafsError
    model = task.make_model(activation_factory(formula), seed=seed)
    model.train()
    xb, yb = next(iter(task.batches("train", task.eval_config.batch_size, seed=seed)))
    loss = task.loss_fn(model(xb), yb)
    if not torch.isfinite(loss.detach()):
        return f"gives a non-finite loss ({float(loss.detach())}) at initialisation"
    loss.backward()
    bad = [n for n, p in model.named_parameters()
           if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        return f"gives non-finite gradients at initialisation (first: {bad[0]})"
    if steps:
        model = task.make_model(activation_factory(formula), seed=seed)
        try:
            task.fit(model, max_steps=steps, seed=seed)
        except GrafsError as err:
            return f"diverges within {steps} training steps from scratch ({err})"
    return None


def evaluate(task, activations: Sequence[str] | dict[str, str] = (), *, seeds: int | Sequence[int] = 5,
             baselines: Sequence[str] = tuple(BASELINES), epochs: int | None = None,
             search_seconds: float | None = None, backend: str | None = None,
             device: str | torch.device | None = None, progress: bool = True,
             max_steps: int | None = None, callbacks=None, jobs: int = 1,
             out_dir: str | os.PathLike | None = None,
             distributed: bool | None = None) -> EvalTable:
    """Train ``task``'s model from scratch with each activation for each seed; test metric table.

    ``task``: a grafs.tasks.Task or a task name. ``activations``: formulas (or name -> formula);
    ``baselines``: names from :data:`BASELINES` in any spelling a formula accepts (``gelu``).
    ``backend`` for the formulas defaults to inductor on CUDA and eager on CPU (compile time
    would dominate small CPU runs).
    ``callbacks``: :class:`grafs.Callback` instances told of every run (e.g.
    :class:`grafs.TensorBoardLogger`).
    ``jobs``: the (activation × seed) runs go to that many spawned worker processes (one GPU
    each when ``device`` is CUDA without an index and there are several; else the torch
    threads are split between them); the scores equal the sequential ones. A run that raises
    is listed in ``table.failures`` and the others are kept. ``out_dir``: finished runs are
    cached in ``out_dir/runs/`` and a later call skips them (see grafs.protocol.runs).
    ``distributed``: under torchrun, the runs are spread over every rank of every node and every
    rank returns the whole table (None: when a process group of several processes is
    initialised; True: also initialise it from torchrun's environment; False: never; see
    :func:`grafs.protocol.runs.run_all`); callbacks and ``progress`` then see the runs of other
    ranks when all are done, so pass them on rank 0 only.
    """
    from grafs.protocol.runs import RunSpec, run_all
    from grafs.callbacks import CallbackList, EvalRunInfo, EvalStart
    from grafs.tasks import get_task
    cbs = CallbackList(callbacks)
    if isinstance(task, str):
        task = get_task(task)
    named = dict(activations) if isinstance(activations, dict) else \
        {f"F{i + 1}": f for i, f in enumerate(activations)}
    baselines = baseline_names(baselines)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise GrafsError("need at least one seed")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    backend = backend or ("inductor" if dev.type == "cuda" else "eager")
    entries = [(n, f, activation_factory(f, backend)) for n, f in named.items()] + \
              [(b, b, BASELINES[b]) for b in baselines]
    cfg = task.eval_config if epochs is None else task.eval_config.replace(epochs=epochs)
    cbs.on_eval_start(EvalStart(task.name, task.metric_name, {n: f for n, f, _ in entries},
                                seed_list, cfg.epochs))
    specs = [RunSpec(len(seed_list) * e + k, name, formula, s, baseline=e >= len(named))
             for e, (name, formula, _) in enumerate(entries) for k, s in enumerate(seed_list)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(specs), desc=f"evaluate {task.name}", unit="run")

    def report(r) -> None:  # each run's result, in the order of specs
        sp = r.spec
        if r.error is None:
            cbs.on_eval_run_end(EvalRunInfo(sp.name, sp.formula, sp.seed, task.metric_name, r.score,
                                            r.seconds, list(r.train_loss), sp.index, len(specs)))
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{sp.name} seed {sp.seed}: "
                                + (f"{r.score:.4f}" if r.error is None else "failed"))
    try:
        results = run_all(task, specs, cfg, backend, dev, max_steps, jobs, out_dir, report,
                          distributed)
    finally:
        if bar is not None:
            bar.close()
    rows = [EvalRow(name, formula, [], []) for name, formula, _ in entries]
    failures = []
    for r in results:
        if r.error is None:
            rows[r.spec.index // len(seed_list)].scores.append(r.score)
            rows[r.spec.index // len(seed_list)].seconds.append(r.seconds)
        else:
            failures.append({"name": r.spec.name, "formula": r.spec.formula, "seed": r.spec.seed,
                             "error": r.error})
    table = EvalTable(task.name, task.metric_name, task.higher_is_better, rows, search_seconds,
                      {"seeds": seed_list, "epochs": cfg.epochs, "backend": backend}, failures)
    cbs.on_eval_end(table)
    return table
