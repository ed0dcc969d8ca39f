"""The built-in experiment tracker: a :class:`~grafs.callbacks.Callback` that writes TensorBoard
event files (``pip install 'grafs[tensorboard]'``; images need ``grafs[plots]`` too).

Search, per epoch: the scalars ``loss/train``, ``loss/val``, ``accuracy/train``,
``accuracy/val``, ``search/ops_active``, ``search/epoch_seconds`` and ``entropy/<hole>``; the
histograms ``alpha/<hole>`` (α of the ops still active); the leading formula as text
(``search/formula``) and its plot with its derivative as an image (``search/activation``).
Every ``step_every`` steps: ``step/train_loss`` and ``step/val_loss``.
Evaluation: ``eval/<metric>/<name>`` per seed, ``eval_train_loss/<name>/seed<s>`` per epoch, and
the result table as text (``eval/table``).

View with ``tensorboard --logdir DIR``.
"""
from __future__ import annotations

import json
import os
import warnings

from grafs.callbacks.events import Callback, EpochInfo, EvalRunInfo, EvalStart, SearchStart, StepInfo
from grafs.errors import GrafsError


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise GrafsError("the TensorBoard logger needs tensorboard: pip install 'grafs[tensorboard]'"
                         ) from err
    return SummaryWriter


def _is_main_process() -> bool:
    # under torchrun only rank 0 writes, so one run's events are not written N times
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class TensorBoardLogger(Callback):
    """Write a search's or an evaluation's progress to TensorBoard event files in ``log_dir``.

    ``step_every``: log the step losses every that many steps (0: never; reading a loss syncs
    an accelerator). ``images``: plot the leading activation every epoch (needs matplotlib;
    skipped with one warning without it). ``plot_range``: the x range of that plot.
    """

    def __init__(self, log_dir: str | os.PathLike, *, step_every: int = 10, images: bool = True,
                 plot_range: tuple[float, float] = (-5.0, 5.0)):
        self._writer_cls = _summary_writer()  # fail now, not after the first epoch
        if step_every < 0:
            raise GrafsError(f"step_every must be >= 0, got {step_every}")
        self.log_dir = str(log_dir)
        self.step_every = step_every
        self.images = images
        self.plot_range = plot_range
        self.writer = None

    # -- writer lifetime -----------------------------------------------------------------------
    def _open(self):
        if self.writer is None and _is_main_process():
            self.writer = self._writer_cls(self.log_dir)
        return self.writer

    def close(self) -> None:
        """Flush and close the event file (search/evaluation end does this)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # -- search --------------------------------------------------------------------------------
    def on_search_start(self, info: SearchStart) -> None:
        w = self._open()
        if w is None:
            return
        settings = json.dumps(info.settings, indent=1, default=str)
        w.add_text("search/settings", f"```\n{settings}\n```", info.first_epoch)

    def on_step_end(self, info: StepInfo) -> None:
        if self.writer is None or not self.step_every or info.global_step % self.step_every:
            return
        self.writer.add_scalar("step/train_loss", float(info.loss), info.global_step)
        self.writer.add_scalar("step/val_loss", float(info.val_loss), info.global_step)

    def on_epoch_end(self, info: EpochInfo) -> None:
        w = self._open()
        if w is None:
            return
        e = info.epoch
        w.add_scalar("loss/train", info.train_loss, e)
        w.add_scalar("loss/val", info.val_loss, e)
        if info.train_acc is not None:
            w.add_scalar("accuracy/train", info.train_acc, e)
        if info.val_acc is not None:
            w.add_scalar("accuracy/val", info.val_acc, e)
        w.add_scalar("search/ops_active", info.num_active, e)
        w.add_scalar("search/epoch_seconds", info.seconds, e)
        for hole, ent, alpha in zip(info.holes, info.entropy, info.alpha):
            w.add_scalar(f"entropy/{hole}", ent, e)
            w.add_histogram(f"alpha/{hole}", _tensor(alpha), e)
        dropped = ", ".join(f"{op} from {h}" for h, op in info.dropped) or "none"
        w.add_text("search/formula", f"`{info.formula}`  \ndropped this epoch: {dropped}", e)
        if self.images:
            self._plot(w, info)
        w.flush()  # a killed search still leaves every finished epoch readable

    def _plot(self, w, info: EpochInfo) -> None:
        try:
            from grafs.plot import activations_figure
            lo, hi = self.plot_range
            fig = activations_figure([info.formula], ["leading"], ["relu(x)", "gelu(x)"], lo, hi,
                                     title=f"epoch {info.epoch + 1}/{info.epochs}", figsize=(8, 3.2))
        except GrafsError as err:  # matplotlib missing: keep logging everything else
            warnings.warn(f"TensorBoardLogger: no activation images ({err})", stacklevel=2)
            self.images = False
            return
        w.add_figure("search/activation", fig, info.epoch)  # closes the figure

    def on_search_end(self, result) -> None:
        w = self._open()
        if w is not None:
            w.add_text("search/result", f"`{result.formula}`  \nsearch time "
                       f"{result.search_seconds:.1f} s", len(result.history.get("epochs", [])))
        self.close()

    # -- evaluation ----------------------------------------------------------------------------
    def on_eval_start(self, info: EvalStart) -> None:
        w = self._open()
        if w is None:
            return
        rows = "\n".join(f"| {n} | `{f}` |" for n, f in info.activations.items())
        w.add_text("eval/activations", f"task {info.task}, seeds {info.seeds}, {info.epochs} epochs\n\n"
                   f"| name | formula |\n|---|---|\n{rows}", 0)

    def on_eval_run_end(self, info: EvalRunInfo) -> None:
        w = self._open()
        if w is None:
            return
        w.add_scalar(f"eval/{info.metric}/{info.name}", info.score, info.seed)
        w.add_scalar(f"eval_seconds/{info.name}", info.seconds, info.seed)
        for epoch, loss in enumerate(info.train_loss):
            w.add_scalar(f"eval_train_loss/{info.name}/seed{info.seed}", loss, epoch)
        w.flush()

    def on_eval_end(self, table) -> None:
        w = self._open()
        if w is not None:
            w.add_text("eval/table", table.markdown(), 0)
        self.close()


def _tensor(values):
    import torch
    return torch.tensor(values, dtype=torch.float64)
