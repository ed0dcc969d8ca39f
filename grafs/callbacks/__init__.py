"""Follow a search or an evaluation while it runs: :class:`Callback` and the info objects it
is told of (:mod:`~grafs.callbacks.events`), and the built-in TensorBoard logger
(:mod:`~grafs.callbacks.tensorboard`, which imports tensorboard only when created)."""
from grafs.callbacks.events import (Callback, CallbackList, EpochInfo, EvalRunInfo, EvalStart,
                                    SearchStart, StepInfo, epoch_info)
from grafs.callbacks.tensorboard import TensorBoardLogger

__all__ = ["Callback", "CallbackList", "SearchStart", "StepInfo", "EpochInfo", "EvalStart",
           "EvalRunInfo", "epoch_info", "TensorBoardLogger"]
