"""The evaluation protocol of seeds/001 §4.1: train from scratch with each activation over n
seeds and report mean ± standard error of the mean, plus the search/evaluation time ratio."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from grafs.errors import GrafsError

#: the baselines of the paper's tables, as native modules (fast) with their formula names
BASELINES: dict[str, Callable[[], nn.Module]] = {
    "ReLU": nn.ReLU, "GELU": nn.GELU, "SiLU": nn.SiLU, "ELU": nn.ELU, "LeakyReLU": nn.LeakyReLU,
}


@dataclass
class EvalRow:
    name: str
    formula: str
    scores: list[float]
    seconds: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def sem(self) -> float:
        n = len(self.scores)
        return statistics.stdev(self.scores) / math.sqrt(n) if n > 1 else float("nan")


@dataclass
class EvalTable:
    task: str
    metric: str
    higher_is_better: bool
    rows: list[EvalRow]
    search_seconds: float | None = None
    settings: dict = field(default_factory=dict)

    @property
    def eval_seconds(self) -> float:
        """Mean wall time of one evaluation run (one activation, one seed)."""
        return statistics.fmean(s for r in self.rows for s in r.seconds)

    @property
    def search_eval_ratio(self) -> float | None:
        return None if not self.search_seconds else self.search_seconds / self.eval_seconds

    def best(self) -> EvalRow:
        key = (lambda r: r.mean) if self.higher_is_better else (lambda r: -r.mean)
        return max(self.rows, key=key)

    def markdown(self, digits: int = 4) -> str:
        best = self.best()
        lines = [f"| activation | {self.metric} (mean ± SEM, n={len(self.rows[0].scores)}) | formula |",
                 "|---|---|---|"]
        for r in self.rows:
            cell = f"{r.mean:.{digits}f} ± {r.sem:.{digits}f}"
            if r is best:
                cell = f"**{cell}**"
            lines.append(f"| {r.name} | {cell} | `{r.formula}` |")
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
                "settings": self.settings}


def _factory(formula: str, backend: str) -> Callable[[], nn.Module]:
    from grafs.compiler import compile as gcompile
    from grafs.grammar.parser import parse
    parse(formula)  # fail early on a bad formula
    return lambda: gcompile(formula, backend=backend)


def baseline_names(names: Sequence[str]) -> list[str]:
    """The :data:`BASELINES` keys for ``names`` spelled any way a formula may spell the
    function (case-insensitive, ``_`` ignored, aliases: ``gelu``, ``leaky_relu``, ``swish``),
    in order and without repeats."""
    from grafs.ops import lookup
    by_op = {lookup(k).name: k for k in BASELINES}
    if isinstance(names, str):
        names = [names]
    out, unknown = [], []
    for n in names:
        op = lookup(n) if isinstance(n, str) else None
        key = by_op.get(op.name) if op is not None else None
        if key is None:
            unknown.append(n)
        elif key not in out:
            out.append(key)
    if unknown:
        raise GrafsError(f"unknown baseline(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(BASELINES)} (any spelling a formula accepts: gelu, "
                         f"leaky_relu, LeakyReLU, swish, …)")
    return out


def evaluate(task, activations: Sequence[str] | dict[str, str] = (), *, seeds: int | Sequence[int] = 5,
             baselines: Sequence[str] = tuple(BASELINES), epochs: int | None = None,
             search_seconds: float | None = None, backend: str | None = None,
             device: str | torch.device | None = None, progress: bool = True,
             max_steps: int | None = None, callbacks=None) -> EvalTable:
    """Train ``task``'s model from scratch with each activation for each seed; test metric table.

    ``task``: a grafs.tasks.Task or a task name. ``activations``: formulas (or name -> formula);
    ``baselines``: names from :data:`BASELINES` in any spelling a formula accepts (``gelu``).
    ``backend`` for the formulas defaults to inductor on CUDA and eager on CPU (compile time
    would dominate small CPU runs).
    ``callbacks``: :class:`grafs.Callback` instances told of every run (e.g.
    :class:`grafs.TensorBoardLogger`).
    """
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
    entries = [(n, f, _factory(f, backend)) for n, f in named.items()] + \
              [(b, b, BASELINES[b]) for b in baselines]
    cfg = task.eval_config if epochs is None else task.eval_config.replace(epochs=epochs)
    cbs.on_eval_start(EvalStart(task.name, task.metric_name, {n: f for n, f, _ in entries},
                                seed_list, cfg.epochs))
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(entries) * len(seed_list), desc=f"evaluate {task.name}", unit="run")
    try:
        for name, formula, factory in entries:
            row = EvalRow(name, formula, [], [])
            for s in seed_list:
                model = task.make_model(factory, seed=s).to(dev)
                t0 = time.perf_counter()
                fit = task.fit(model, cfg, seed=s, device=dev, max_steps=max_steps)
                row.seconds.append(time.perf_counter() - t0)
                row.scores.append(float(task.evaluate(model, "test", device=dev)[task.metric_name]))
                cbs.on_eval_run_end(EvalRunInfo(name, formula, s, task.metric_name, row.scores[-1],
                                                row.seconds[-1], list(fit["train_loss"]),
                                                len(rows) * len(seed_list) + len(row.scores) - 1,
                                                len(entries) * len(seed_list)))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{name} seed {s}: {row.scores[-1]:.4f}")
            rows.append(row)
    finally:
        if bar is not None:
            bar.close()
    table = EvalTable(task.name, task.metric_name, task.higher_is_better, rows, search_seconds,
                      {"seeds": seed_list, "epochs": cfg.epochs, "backend": backend})
    cbs.on_eval_end(table)
    return table
