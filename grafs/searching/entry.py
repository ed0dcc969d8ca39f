"""``grafs.search``: a search on any model with the settings the studies support, a budget
sized from the data, restarts picked by training from scratch, the from-scratch check, and a
verdict against the model's own activation.

The algorithm itself is :func:`grafs.searching.loop.search` (one search, the settings as
given); this module decides the settings and measures what a user needs to know about the
formula it returns, with :class:`~grafs.searching.scratch.ScratchTrainer` (the search's own
recipe, from scratch).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Sequence

import torch
from torch import nn

from grafs.errors import GrafsError, warn
from grafs.searching.data import split_dataset
from grafs.searching.result import SearchResult
from grafs.searching.scratch import OnRank0, ScratchTrainer
from grafs.searching.check import check_trains
from grafs.searching.config import SearchConfig
from grafs.searching.original import original_activation
from grafs.searching.sites import DEFAULT_TYPES, check_not_searched
from grafs.searching.verdict import measure_verdict

#: the keyword names of grafs.search that differ from the SearchConfig field they set
_ALIASES = {"shrink_start": "shrink_start_epoch", "grad_accumulation": "grad_accum_steps"}
_FIELDS = {f.name for f in dataclasses.fields(SearchConfig)}


def search(model, train_data, val_data=None, *, config: SearchConfig | None = None,
           preset: str = "auto", seed: int = 0, epochs: int | None = None,
           restarts: int | None = None, batch_size: int | None = None, budget: str | None = None,
           verdict_seeds: int | None = None, check: bool | None = None,
           keep_original_if_worse: bool | None = None, arch_lr: float | None = None,
           arch_weight_decay: float | None = None, warmstart_epochs: int | None = None,
           shrink_start: int | None = None, train_fraction: float | None = None,
           space=None, activation_types: Sequence[type] = DEFAULT_TYPES, device=None,
           progress: bool = True, scratch=None, **kwargs) -> SearchResult:
    """Search ``model``'s activation (see the guide, docs/guide/search.md).

    ``model``: the network (searched as a copy: your model is left as it was), or
    ``seed -> nn.Module`` (a fresh model per restart). ``config``: a :class:`~grafs.searching.config.SearchConfig` — the one
    configuration of a search, the same object every built-in task carries; by default
    ``SearchConfig.preset(preset)``. Every keyword that names a ``SearchConfig`` field (those
    in the signature, and e.g. ``arch_steps``, ``arch_batch_size``, ``restart_select``,
    ``max_steps_per_epoch``, ``lr``, ``optimizer="sgd"``) overrides the config's value.

    ``preset="auto"`` (default, ``SearchConfig.auto()``): the settings the studies support for
    any model (op-output normalisation, ``arch_lr=3e-2``, no weight decay on α),
    ``budget="auto"`` sizes the epochs from the data (or checks the ``epochs`` given, refusing
    a budget below what α needs), ``restarts`` searches are compared by training each formula
    from scratch with the search's own recipe, the returned formula is checked to train from
    scratch (else its clipped form, else your original activation is returned, with a
    warning), and ``result.verdict`` compares it with the original activation over
    ``verdict_seeds`` from-scratch trainings (0: no verdict); when the verdict finds it worse
    than the original (``keep_original_if_worse``), the original is returned, with a warning,
    and ``history["rejected_formula"]`` keeps the found one. ``preset="paper"``
    (``SearchConfig.paper()``): the paper's settings as given (``SearchSpace.grafs()``,
    ``arch_lr=1e-3``, ``arch_weight_decay=1e-3``, ``epochs=10``), no budget rule, restart
    pick, check or verdict.

    ``optimizer``/``scheduler`` may also be factories (``lambda params: ...``, ``lambda opt:
    ...``) instead of the config's; ``scratch``: what measures formulas from scratch (default:
    :class:`~grafs.searching.scratch.ScratchTrainer`, the search's own recipe; a built-in task
    passes its evaluation protocol). Every other keyword goes to
    :func:`grafs.searching.loop.search` (loss_fn, amp, checkpoint_dir, resume, callbacks,
    distributed, cell_mode, ...).
    """
    from grafs.runtime.space import SearchSpace
    given = dict(epochs=epochs, restarts=restarts, batch_size=batch_size, budget=budget,
                 verdict_seeds=verdict_seeds, check=check,
                 keep_original_if_worse=keep_original_if_worse, arch_lr=arch_lr,
                 arch_weight_decay=arch_weight_decay, warmstart_epochs=warmstart_epochs,
                 shrink_start=shrink_start, train_fraction=train_fraction)
    cfg = configure(config, preset, {**{k: v for k, v in given.items() if v is not None},
                                     **_config_keywords(kwargs)})
    _check_keywords(kwargs)
    if isinstance(model, nn.Module):
        check_not_searched(model)
    # named before the search, so a model whose activation has no formula fails at once
    original = original_activation(_as_module(model, seed), activation_types) \
        if cfg.check or cfg.verdict_seeds else None
    if space is None:
        space = SearchSpace.grafs(normalize=cfg.normalize)
    split = (train_data, val_data) if val_data is not None else \
        split_dataset(train_data, cfg.train_fraction, seed)   # one split for every restart
    from grafs.searching.distributed import world_size
    # a data-parallel search's batch_size is per process: each reads its shard
    dist_arg = kwargs.get("distributed")
    # the cap is in optimizer steps, the loop counts micro-batches
    micro_cap = None if cfg.max_steps_per_epoch is None else cfg.max_steps_per_epoch * cfg.grad_accum_steps
    micro = _steps_per_epoch(split[0], cfg.batch_size * world_size(dist_arg), micro_cap)
    epochs, warm, start = cfg.epoch_plan(micro)
    opt_steps = epochs * math.ceil(micro / cfg.grad_accum_steps)
    if not callable(kwargs.get("optimizer")):
        kwargs["optimizer"] = cfg.make_optimizer
    if kwargs.get("scheduler") is None:
        kwargs["scheduler"] = lambda opt: cfg.make_scheduler(opt, opt_steps)
    if "resume" in kwargs:     # (restarts resume from a folder per restart: resolved here)
        from grafs.searching.checkpoint import resume_source
        kwargs["resume"] = resume_source(kwargs["resume"], kwargs.get("checkpoint_dir"))
    dev = _device(model, device)
    _first_pass(model, split[0], cfg.batch_size, kwargs.get("loss_fn"), dev, seed)
    measure = cfg.check or cfg.verdict_seeds or (cfg.restarts > 1 and cfg.restart_select == "scratch")
    if scratch is None and measure:
        scratch = ScratchTrainer(model, *split, epochs=epochs, batch_size=cfg.batch_size,
                                 loss_fn=kwargs.get("loss_fn"), optimizer=kwargs["optimizer"],
                                 scheduler=kwargs["scheduler"], activation_types=activation_types,
                                 device=dev, max_steps_per_epoch=cfg.max_steps_per_epoch,
                                 grad_accum_steps=cfg.grad_accum_steps)
    if scratch is not None:
        from grafs.searching import distributed as gdist
        ctx = gdist.context(dist_arg, dev, device is not None)
        if ctx is not None:         # every rank must pick and return the same formula
            scratch = OnRank0(scratch, ctx)
    common = dict(space=space, epochs=epochs, warmstart_epochs=warm, shrink_start=start,
                  batch_size=cfg.batch_size, arch_lr=cfg.arch_lr,
                  arch_weight_decay=cfg.arch_weight_decay, arch_betas=tuple(cfg.arch_betas),
                  arch_steps=cfg.arch_steps, arch_batch_size=cfg.arch_batch_size,
                  single_level=cfg.single_level, grad_accumulation=cfg.grad_accum_steps,
                  max_steps_per_epoch=micro_cap,
                  activation_types=activation_types, device=device, progress=progress, **kwargs)
    result = _search(model, split, train_data if val_data is None else None, cfg, seed, scratch,
                     common)
    result.settings.update(budget=cfg.budget, steps_per_epoch=micro)
    if config is None:
        result.settings["preset"] = preset
    if not cfg.check and not cfg.verdict_seeds:
        return result
    t0 = time.perf_counter()
    if cfg.check:
        check_trains(result, scratch, space, original, seed)
    t1 = time.perf_counter()
    result.settings["check_seconds"] = t1 - t0        # (search_seconds: the search and its pick)
    if cfg.verdict_seeds:
        verdict = measure_verdict(result, scratch, original, cfg.verdict_seeds, seed)
        result.settings["verdict_seconds"] = time.perf_counter() - t1
        result.history["verdict"] = verdict.to_dict()
        if cfg.keep_original_if_worse and not verdict.no_worse and result.formula != original:
            msg = f"{verdict}; returning your original activation {original}"
            result.history["rejected_formula"] = result.formula
            result.history.setdefault("warnings", []).append(msg)
            result.formula = original
            warn(msg)
    result.settings["scratch_runs"] = scratch.runs
    return result


def configure(config: SearchConfig | None, preset: str, overrides: dict) -> SearchConfig:
    """The search's configuration: ``config`` (or the preset's) with ``overrides`` applied and
    validated; a shorter ``epochs`` alone moves the warm start and first drop inside the run
    (:meth:`SearchConfig.for_epochs`)."""
    if config is not None and preset != "auto":
        raise GrafsError(f"give a config or a preset, not both (config={type(config).__name__}, "
                         f"preset={preset!r})")
    if config is not None and not isinstance(config, SearchConfig):
        raise GrafsError(f"config must be a grafs.SearchConfig (e.g. SearchConfig.auto(), or a "
                         f"task's search_config), got {type(config).__name__}")
    cfg = config if config is not None else SearchConfig.preset(preset)
    overrides = {_ALIASES.get(k, k): v for k, v in overrides.items()}
    epochs = overrides.pop("epochs", None)
    if epochs is None:
        return cfg.replace(**overrides)
    if cfg.epochs is None or {"warmstart_epochs", "shrink_start_epoch"} & set(overrides):
        return cfg.replace(**overrides, epochs=epochs)
    return cfg.replace(**overrides).for_epochs(epochs)


def _config_keywords(kwargs: dict) -> dict:
    """Pop the keywords that name a SearchConfig field (an optimizer factory stays: it is not
    the config's optimizer name; ``optimizer=None`` means the config's)."""
    if kwargs.get("optimizer", 0) is None:
        del kwargs["optimizer"]
    names = [k for k in kwargs if _ALIASES.get(k, k) in _FIELDS
             and not (k == "optimizer" and callable(kwargs[k]))]
    return {k: kwargs.pop(k) for k in names}


def _check_keywords(kwargs: dict) -> None:
    """A GrafsError for a keyword neither grafs.search nor the search loop takes (a typo such
    as ``arch_lrr=``), naming the close ones and the accepted names."""
    import difflib
    import inspect
    from grafs.searching.loop import search as search_once
    params = inspect.signature(search_once).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return              # (a stand-in that takes any keyword)
    loop_names = {n for n in params if not n.startswith("_")}    # (private ones pass, unlisted)
    own = {n for n in inspect.signature(search).parameters if n != "kwargs"}
    unknown = sorted(set(kwargs) - set(params))
    if not unknown:
        return
    accepted = sorted((own | loop_names | _FIELDS | set(_ALIASES)) - {"model", "train_data", "val_data"})
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(k, accepted, n=2, cutoff=0.6)
        hints.append(f"{k!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
    raise GrafsError(f"grafs.search got unknown keyword{'s' if len(unknown) > 1 else ''} "
                     f"{', '.join(hints)}; accepted: {', '.join(accepted)}")


def _as_module(model, seed: int) -> nn.Module:
    return model if isinstance(model, nn.Module) else model(seed)


def _search(model, split, unsplit, cfg: SearchConfig, seed: int, scratch, common: dict) -> SearchResult:
    """One search, or ``cfg.restarts`` of them with the pick (grafs.searching.restarts)."""
    from grafs.searching.loop import search as search_once
    if cfg.restarts == 1:
        # a copy: the user's model keeps its activations and weights (a second search of it,
        # or its from-scratch runs, would otherwise start from this search's sites and weights)
        fresh = copy.deepcopy(model) if isinstance(model, nn.Module) else model(seed)
        return search_once(fresh, *split, seed=seed, **common)
    from grafs.searching.restarts import search_restarts
    score = (lambda r: scratch.val_loss(r.formula, seed)) if cfg.restart_select == "scratch" else None
    own = cfg.restart_splits and unsplit is not None     # each restart splits with its seed
    if cfg.restart_splits and not own:
        warn("restart_splits=True needs the training data unsplit: with val_data given, every "
             "restart searches on that one split (leave val_data out to give each restart its "
             "own split)")
    result = search_restarts(model, *((unsplit, None) if own else split), restarts=cfg.restarts,
                             seed=seed, pick_epoch=cfg.restart_pick_epoch, own_splits=own,
                             train_fraction=cfg.train_fraction, score=score, **common)
    result.settings["restart_select"] = cfg.restart_select
    return result


def _first_pass(model, train_data, batch_size: int, loss_fn, dev, seed: int) -> None:
    """A forward and loss of (a copy of) the model on a few training examples before the
    search (:func:`~grafs.searching.losses.check_first_pass`)."""
    from grafs.searching.data import Batches
    from grafs.searching.losses import check_first_pass
    xb, yb = next(iter(Batches(train_data, min(batch_size, 8), seed, 0, "train_data").epoch(0)))
    net = copy.deepcopy(model) if isinstance(model, nn.Module) else model(seed)
    check_first_pass(net, xb, yb, loss_fn, dev)


def _steps_per_epoch(train_data, batch_size: int, max_steps: int | None) -> int:
    from grafs.searching.data import Batches
    n = len(Batches(train_data, batch_size, 0, 0, "train_data"))
    return n if max_steps is None else min(n, max_steps)


def _device(model: nn.Module, device) -> torch.device:
    from grafs.searching.data import resolve_device
    if device is not None:
        return resolve_device(device)
    params = model.parameters() if isinstance(model, nn.Module) else ()
    return next((p.device for p in params), torch.device("cpu"))
