"""``grafs.search``: a search on any model with the settings the studies support, a budget
sized from the data, restarts picked by training from scratch, the from-scratch check, and a
verdict against the model's own activation.

The algorithm itself is :func:`grafs.searching.loop.search` (one search, the settings as
given); this module decides the settings and measures what a user needs to know about the
formula it returns, with :class:`~grafs.searching.scratch.ScratchTrainer` (the search's own
recipe, from scratch).
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import nn

from grafs.errors import GrafsError, GrafsWarning
from grafs.searching.data import split_dataset
from grafs.searching.result import SearchResult
from grafs.searching.scratch import ScratchTrainer
from grafs.searching.sites import DEFAULT_TYPES, Act
from grafs.searching.verdict import Verdict

#: The budget rule (docs/guide/search.md, "The budget"): the search needs at least this many
#: arch steps after the warm start before its first drop, and this many steps in all. Anchored
#: on the built-in tasks whose searches beat their baselines: mnist1d (47 arch steps after the
#: warm start before the first drop, 470 in all), teacher (144 and 1440), inr (100 and 600);
#: with digits' 17 and 170, α was still about uniform at the first drop.
MIN_STEPS_BEFORE_DROP = 100
MIN_TOTAL_STEPS = 500
#: the settings the ablations support for a model grafs knows nothing about: op-output
#: normalisation and arch_lr 3e-2 (the built-in tasks, docs/results-teacher.md), and no weight
#: decay on α (docs/results-own-models.md: with Adam, decay 1e-3 pulled α back to uniform,
#: entropy 0.995 at the first drop against 0.95 without; 7 of 9 own-model searches no worse
#: than the original activation against 6 of 9)
AUTO_ARCH_LR = 3e-2
AUTO_ARCH_WEIGHT_DECAY = 0.0
PAPER_ARCH_LR = 1e-3
PRESETS = ("auto", "paper")


def size_budget(steps_per_epoch: int, epochs: int | None = None, warmstart_epochs: int | None = None,
           shrink_start: int | None = None) -> tuple[int, int, int]:
    """(epochs, warmstart_epochs, shrink_start) that give α :data:`MIN_STEPS_BEFORE_DROP` arch
    steps after the warm start before the first drop and :data:`MIN_TOTAL_STEPS` in all; the
    values given are checked instead of chosen, and a GrafsError says what is missing."""
    spe = max(1, steps_per_epoch)
    warm = warmstart_epochs if warmstart_epochs is not None else max(1, math.ceil(50 / spe))
    start = shrink_start if shrink_start is not None else warm + math.ceil(MIN_STEPS_BEFORE_DROP / spe)
    need = max(math.ceil(MIN_TOTAL_STEPS / spe), start + 3)
    if epochs is None:
        return need, warm, start
    problems = []
    if (start - warm) * spe < MIN_STEPS_BEFORE_DROP:
        problems.append(f"{(start - warm) * spe} arch steps between the warm start and the first "
                        f"drop (needs {MIN_STEPS_BEFORE_DROP})")
    if epochs * spe < MIN_TOTAL_STEPS:
        problems.append(f"{epochs * spe} steps in all (needs {MIN_TOTAL_STEPS})")
    if problems:
        raise GrafsError(f"a search of {epochs} epochs × {spe} steps gives α "
                         + " and ".join(problems) + f": its drops would be close to random. "
                         f"Leave epochs out (budget='auto' sizes the search: {need} epochs here), "
                         f"or pass budget='as_given' to run it anyway")
    return epochs, warm, start


def search(model: nn.Module, train_data, val_data=None, *, preset: str = "auto",
           epochs: int | None = None, restarts: int = 1,
           verdict_seeds: int = 3, check: bool = True, keep_original_if_worse: bool = True,
           seed: int = 0, batch_size: int = 128,
           space=None, arch_lr: float | None = None, arch_weight_decay: float | None = None,
           warmstart_epochs: int | None = None,
           shrink_start: int | None = None, train_fraction: float = 0.75,
           activation_types: Sequence[type] = DEFAULT_TYPES, device=None, progress: bool = True,
           budget: str = "auto", **kwargs) -> SearchResult:
    """Search ``model``'s activation (see the guide, docs/guide/search.md).

    ``preset="auto"`` (default): the settings the studies support for any model (op-output
    normalisation, ``arch_lr=3e-2``, no weight decay on α), ``budget="auto"`` sizes the epochs from the data (or
    checks the ``epochs`` given, refusing a budget below what α needs), ``restarts`` searches
    are compared by training each formula from scratch with the search's own recipe, the
    returned formula is checked to train from scratch (else its clipped form, else your
    original activation is returned, with a warning), and ``result.verdict`` compares it with
    the original activation over ``verdict_seeds`` from-scratch trainings (0: no verdict); when
    the verdict finds it worse than the original (``keep_original_if_worse``), the original is
    returned, with a warning, and ``history["rejected_formula"]`` keeps the found one.
    ``preset="paper"``: the paper's settings as given (``SearchSpace.grafs()``,
    ``arch_lr=1e-3``, ``arch_weight_decay=1e-3``, ``epochs=10``), no budget rule, restart pick, check or verdict.
    Every other keyword goes to :func:`grafs.searching.loop.search` (optimizer, scheduler,
    loss_fn, amp, checkpoint_dir, resume, callbacks, distributed, ...).
    """
    from grafs.runtime.space import SearchSpace
    from grafs.searching.loop import search as search_once
    if preset not in PRESETS:
        raise GrafsError(f"preset must be one of {', '.join(map(repr, PRESETS))}, got {preset!r}")
    if budget not in ("auto", "as_given"):
        raise GrafsError(f"budget must be 'auto' (size or check the epochs) or 'as_given', got {budget!r}")
    if not isinstance(restarts, int) or restarts < 1:
        raise GrafsError(f"restarts must be an int >= 1, got {restarts!r}")
    paper = preset == "paper"
    if space is None:
        space = SearchSpace.grafs() if paper else SearchSpace.grafs(normalize=True)
    arch_lr = arch_lr if arch_lr is not None else (PAPER_ARCH_LR if paper else AUTO_ARCH_LR)
    if arch_weight_decay is None:
        arch_weight_decay = 1e-3 if paper else AUTO_ARCH_WEIGHT_DECAY
    if val_data is None:      # one split for every restart and every from-scratch run
        train_data, val_data = split_dataset(train_data, train_fraction, seed)
    from grafs.searching.distributed import world_size
    # a data-parallel search's batch_size is per process: each reads its shard
    world = world_size(kwargs.get("distributed"))
    spe = _steps_per_epoch(train_data, batch_size * world, kwargs.get("max_steps_per_epoch"))
    if paper or budget == "as_given":
        epochs = 10 if epochs is None else epochs
        warm = 1 if warmstart_epochs is None else warmstart_epochs
        start = shrink_start
    else:
        epochs, warm, start = size_budget(spe, epochs, warmstart_epochs, shrink_start)
    dev = _device(model, device)
    original = _original_activation(model, activation_types)
    trainer = ScratchTrainer(model, train_data, val_data, epochs=epochs, batch_size=batch_size,
                             loss_fn=kwargs.get("loss_fn"), optimizer=kwargs.get("optimizer"),
                             scheduler=kwargs.get("scheduler"), activation_types=activation_types,
                             device=dev, max_steps_per_epoch=kwargs.get("max_steps_per_epoch"))
    common = dict(space=space, epochs=epochs, warmstart_epochs=warm, shrink_start=start,
                  batch_size=batch_size, arch_lr=arch_lr, arch_weight_decay=arch_weight_decay,
                  activation_types=activation_types,
                  device=device, progress=progress, **kwargs)
    if restarts == 1:
        result = search_once(model, train_data, val_data, seed=seed, **common)
    else:
        from grafs.searching.restarts import search_restarts
        score = None if paper else (lambda r: trainer.val_loss(r.formula, seed=seed))
        result = search_restarts(model, train_data, val_data, restarts=restarts, seed=seed,
                                 score=score, **common)
    result.settings.update(preset=preset, budget=budget, steps_per_epoch=spe)
    if paper:
        return result
    if check:
        _check_trains(result, trainer, space, original, seed)
    if verdict_seeds:
        verdict = _verdict(result, trainer, original, verdict_seeds, seed)
        result.history["verdict"] = verdict.to_dict()
        if keep_original_if_worse and not verdict.no_worse and result.formula != original:
            msg = f"{verdict}; returning your original activation {original}"
            result.history["rejected_formula"] = result.formula
            result.history.setdefault("warnings", []).append(msg)
            result.formula = original
            warnings.warn(msg, GrafsWarning, stacklevel=2)
    result.settings["scratch_runs"] = trainer.runs
    return result


def _steps_per_epoch(train_data, batch_size: int, max_steps: int | None) -> int:
    from grafs.searching.data import Batches
    n = len(Batches(train_data, batch_size, 0, 0, "train_data"))
    return n if max_steps is None else min(n, max_steps)


def _device(model: nn.Module, device) -> torch.device:
    from grafs.searching.data import resolve_device
    if device is not None:
        return resolve_device(device)
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _original_activation(model: nn.Module, types: Sequence[type]) -> str:
    """The formula of the model's first searched activation (e.g. 'relu(x)')."""
    from grafs.ops import lookup
    for m in model.modules():
        if isinstance(m, Act):
            return m.formula
        if isinstance(m, tuple(types)):
            op = lookup(type(m).__name__)
            if op is not None:
                return f"{op.name}(x)"
            raise GrafsError(f"cannot name {type(m).__name__} as a formula for the verdict; pass "
                             f"verdict_seeds=0, or use grafs.Act('<formula>') in the model")
    raise GrafsError(f"no activation modules of types {[t.__name__ for t in types]} found in "
                     f"{type(model).__name__}; use grafs.Act in place of functional calls")


def _check_trains(result: SearchResult, trainer: ScratchTrainer, space, original: str, seed: int) -> None:
    """The returned formula trains from scratch for a few steps with the search's recipe and
    is not affine; if it does not train, its clipped form (the function the search
    evaluated); else, or when it is affine, the original activation, with a warning."""
    from grafs.compiler.lower import clip_expr
    from grafs.grammar.parser import parse
    steps = 20
    bad = result.formula
    if nearly_affine(parse(bad)):
        # a·x + b makes the layers around it one linear map: never what a user wants (on the
        # own-model study such a formula lost to ReLU every time, docs/results-own-models.md)
        why = ("is affine in x on [-3, 3], where most pre-activations lie (the layers around it "
               "would be one linear map)")
        result.formula, what = original, f"your original activation {original}"
    elif math.isfinite(trainer.val_loss(bad, seed, max_steps=steps)):
        return
    else:
        why = f"does not train from scratch with the search's settings (a non-finite loss within {steps} steps)"
        clipped = str(clip_expr(parse(bad), space.ell)) if space.clip else None
        if clipped is not None and clipped != bad and math.isfinite(trainer.val_loss(clipped, seed, max_steps=steps)):
            result.formula, what = clipped, "its clipped form (the function the search evaluated)"
        else:
            result.formula, what = original, f"your original activation {original}"
    msg = f"the found formula {bad} {why}; returning {what}"
    result.history["unusable_formula"] = bad
    result.history.setdefault("warnings", []).append(msg)
    warnings.warn(msg, GrafsWarning, stacklevel=3)


def nearly_affine(expr, lo: float = -3.0, hi: float = 3.0, tol: float = 0.02) -> bool:
    """Whether ``expr`` is a·x + b on [lo, hi] up to ``tol`` (the RMS residual of its best
    straight line over the RMS of its variation): exactly affine formulas, and piecewise ones
    such as ``min(0.4985*x - 0.13, 0.7062*x - 0.83)`` whose kink lies outside the range
    (that one lost to ReLU on the own-model study as the affine ones did)."""
    from grafs.compiler.eager import run_expr
    from grafs.errors import GrafsError
    from grafs.runtime.discretize import is_affine
    if is_affine(expr):
        return True
    xs = torch.linspace(lo, hi, 601, dtype=torch.float64)
    try:
        with torch.no_grad():
            ys = run_expr(expr, xs, {}).double().expand_as(xs)
    except (GrafsError, RuntimeError, KeyError, TypeError):
        return False        # (a trainable family: not judged here)
    if not torch.isfinite(ys).all():
        return False
    a = torch.stack([xs, torch.ones_like(xs)], 1)
    coef = torch.linalg.lstsq(a, ys.unsqueeze(1)).solution
    resid = (a @ coef).squeeze(1) - ys
    spread = (ys - ys.mean()).pow(2).mean().sqrt()
    return bool(spread == 0 or resid.pow(2).mean().sqrt() <= tol * spread)


def _verdict(result: SearchResult, trainer: ScratchTrainer, original: str, seeds: int,
             seed: int) -> Verdict:
    from grafs.grammar.parser import parse
    same = parse(result.formula) is parse(original)
    found = [trainer.val_loss(result.formula, seed + i) for i in range(seeds)]
    orig = found if same else [trainer.val_loss(original, seed + i) for i in range(seeds)]
    return Verdict(result.formula, original, found, orig)
