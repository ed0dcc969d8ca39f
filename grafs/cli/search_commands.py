"""``grafs search`` and ``grafs evaluate``."""
from __future__ import annotations

from pathlib import Path


def _threads(args) -> None:
    # the built-in tasks are tiny: intra-op threads cost more in synchronisation than they gain
    # (measured: 3.6 ms vs 114 ms per mnist1d step on a busy 2-core machine)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)


def _task_options(args) -> dict:
    """Task options given on the command line: ``--set KEY=VALUE`` (any task option or config
    field, grafs.tasks.base.apply_overrides) and ``--teacher`` (the teacher task's)."""
    from grafs.errors import GrafsError
    from grafs.tasks.base import parse_overrides
    opts = parse_overrides(args.set or [])
    for key, flag in (("seed", "--seed/--seeds"), ("epochs", "--epochs"), ("teacher", "--teacher"),
                      ("restarts", "--restarts")):
        if key in opts and (key == "seed" or getattr(args, key, None) is not None):
            raise GrafsError(f"--set {key}=... conflicts with {flag}: give it once, as {flag}")
    if getattr(args, "restarts", None) is not None:
        opts["restarts"] = args.restarts
    if args.teacher is None:
        return opts
    if args.task != "teacher":
        raise GrafsError(f"--teacher is an option of --task teacher, not of --task {args.task}")
    return {**opts, "teacher": args.teacher}


def _callbacks(args) -> list:
    """``--tensorboard DIR``: the built-in TensorBoard logger."""
    if not args.tensorboard:
        return []
    from grafs.callbacks.tensorboard import TensorBoardLogger
    return [TensorBoardLogger(args.tensorboard)]


def _cmd_search(args) -> int:
    _threads(args)
    from grafs.searching import distributed as gdist
    from grafs.searching import resolve_device
    dev = resolve_device(args.device)
    # under torchrun: a data-parallel search in which rank 0 alone prints and writes
    return _under_torchrun(dev, lambda: _search(args, dev, gdist.rank() == 0, gdist.world_size()))


def _no_nan(v):
    """``v`` with every non-finite float replaced by None (recursively)."""
    import math
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_no_nan(x) for x in v]
    return v


def _keep_unfinished(out: Path) -> None:
    """A GrafsError when ``out`` holds the checkpoint of an unfinished search: a run without
    --resume would overwrite its progress after its first epoch (a finished one is run again)."""
    import json
    from grafs.errors import GrafsError
    from grafs.searching.checkpoint import CHECKPOINT_NAME, read_checkpoint
    path = out / CHECKPOINT_NAME
    if not path.is_file():
        return
    try:
        ck = read_checkpoint(path, "cpu")
        epochs = json.loads(ck["settings"]).get("epochs")
    except GrafsError:
        return          # unreadable: nothing to continue from
    if isinstance(epochs, int) and ck["epoch"] + 1 < epochs:
        raise GrafsError(f"{out} holds an unfinished search ({ck['epoch'] + 1} of its {epochs} "
                         f"epochs done): pass --resume to continue it, or another --out (a run "
                         f"without --resume would overwrite it)")


def _under_torchrun(dev, run) -> int:
    """``run()``; under torchrun (WORLD_SIZE > 1) every process runs it, in the process group
    this call initialises from torchrun's environment and destroys afterwards."""
    from grafs.searching import distributed as gdist
    owns = gdist.env_world_size() > 1 and gdist.init_from_env(dev)
    try:
        code = run()
    except BaseException:
        if owns:
            gdist.shutdown(wait=False)
        raise
    if owns:
        gdist.shutdown()
    return code


def _search(args, dev, main: bool, world: int) -> int:
    from grafs.protocol.task_search import search_task
    from grafs.tasks import get_task
    task = get_task(args.task, seed=args.seed, **_task_options(args))
    out = Path(args.out) if args.out else Path("grafs_runs") / f"{args.task}-seed{args.seed}"
    if not args.resume:
        _keep_unfinished(out)
    if main:
        print(f"GRAFS search on task {task.name!r} ({task.description}); seed {args.seed}; "
              f"device {dev}" + (f" × {world} processes" if world > 1 else "")
              + f"; results in {out}/")
    result = search_task(task, seed=args.seed, epochs=args.epochs, progress=not args.quiet,
                         checkpoint_dir=out, resume=out if args.resume else None,
                         cell_mode=args.cell_mode, device=dev, amp=args.amp,
                         callbacks=_callbacks(args) if main else [])
    if not main:
        return 0
    result.save(out)
    if args.plot:
        try:
            from grafs.plot import plot_activations, plot_alpha_history
            plot_activations([result.formula], str(out / "activation.png"), labels=["found"],
                             baselines=["relu(x)", "gelu(x)", "silu(x)"])
            plot_alpha_history(result, str(out / "alpha.png"))
        except ValueError as err:  # matplotlib missing: the search itself succeeded
            print(f"(no plots: {err})")
    restarts = result.history.get("restarts")
    if restarts:
        from grafs.grammar.display import display
        pick = result.settings.get("restart_pick_epoch")
        scratch = result.settings.get("restart_select") == "scratch"
        print(f"{len(restarts)} restarts (kept: the lowest validation loss "
              + ("of its formula trained from scratch " if scratch else "")
              + ("at the end)" if pick is None else f"after epoch {pick + 1}, the only one run on)"))
        for r in restarts:
            vl = "   nan" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
            sc = "" if not scratch else (
                "  from scratch    nan" if r.get("score") is None else f"  from scratch {r['score']:.4f}")
            what = f"failed: {r['error']}" if r.get("error") else display(r["formula"])
            print(f"  {'*' if r['chosen'] else ' '} seed {r['seed']:>5}  val {vl}{sc}  {what}")
    print(f"search took {result.search_seconds:.1f} s")
    _print_found(result)
    _print_late_rise(result)
    return 0


def _print_found(result) -> None:
    """The formula to use first, then each variant on one line with when to prefer it."""
    from grafs.grammar.display import display
    print(f"use this activation: {result.display}")   # rounded; the exact one parses the same
    print(f"  exact formula:     {result.formula}")
    h = result.history
    replaced = h.get("rejected_formula") or (h.get("unusable_formula")
                                             and not h.get("unclipped_formula"))
    if replaced:
        # the original activation came back: the history's variants are the found formula's
        why = ("the verdict found it worse" if h.get("rejected_formula")
               else "it did not train from scratch or was affine")
        print(f"  (your original activation: the search found {display(replaced)}, but {why})")
        return
    variants = []
    unscaled = result.history.get("unscaled_formula")
    if unscaled and unscaled != result.formula:
        variants.append(f"{display(unscaled)}  — without the op-normalisation constants: try it "
                        f"when the activation follows a residual sum or a normalisation layer, "
                        f"where the constant's gain can hurt (grafs evaluate compares both)")
    if result.history.get("unclipped_formula"):
        variants.append(f"{result.history['unclipped_formula']}  — without the search's clipping: "
                        f"only where it trains (it did not from scratch here)")
    uncentred = result.history.get("uncentred_formula")
    if uncentred:
        variants.append(f"{display(uncentred)}  — the cell's own, plus a constant: the same up to "
                        f"the next layer's bias; the centred one above trained better in the studies")
    if variants:
        print("variants:")
        for v in variants:
            print(f"  - {v}")


def _print_late_rise(result) -> None:
    """Say what a validation loss that rises at the end of the search means (and does not)."""
    h = result.history
    vl = h.get("val_loss") or []
    if len(vl) < 2 or not all(v == v for v in vl):
        return
    best = min(range(len(vl)), key=vl.__getitem__)
    if vl[-1] > 1.5 * vl[best] and best < len(vl) - 1:
        print(f"note: the search's validation loss rose from {vl[best]:.3f} (epoch {best + 1}, "
              f"{h['num_active'][best]} ops) to {vl[-1]:.3f} at the end: its last drops switched the "
              f"shared network from a mixture to one op per hole late in the learning-rate "
              f"schedule, and its weights had little time to adapt. That loss is not the "
              f"formula's: a network trained from scratch with it is (grafs evaluate).")


def _cmd_evaluate(args) -> int:
    _threads(args)
    from grafs.searching import distributed as gdist
    from grafs.searching import resolve_device
    dev = resolve_device(args.device)
    # under torchrun: the runs spread over the ranks of every node; rank 0 alone prints and writes
    return _under_torchrun(dev, lambda: _evaluate(args, dev, gdist.rank() == 0))


def _evaluate(args, dev, rank0: bool) -> int:
    from grafs.protocol.evaluate import evaluate
    from grafs.tasks import get_task
    if args.plot and rank0:
        from grafs.plot import check_plot_path
        check_plot_path(args.plot)          # before the runs, not after them
    task = get_task(args.task, **_task_options(args))
    acts = list(args.activations or [])
    times = []
    for r in args.results or []:
        from grafs.searching import SearchResult
        res = SearchResult.load(r)
        acts.append(res.formula)
        times.append(res.search_seconds)
    # the ratio of the paper's tables: (mean) search time over the time of one evaluation run
    search_seconds = args.search_seconds or (sum(times) / len(times) if times else None)
    named: dict[str, str] = {f"F{i + 1}": f for i, f in enumerate(acts)}
    if args.scaled_baselines:
        from grafs.protocol.evaluate import scaled_baselines
        named.update(scaled_baselines(task))
    table = evaluate(task, named, seeds=args.seeds, baselines=args.baselines, epochs=args.epochs,
                     search_seconds=search_seconds, progress=not args.quiet and rank0,
                     device=dev, callbacks=_callbacks(args) if rank0 else [],
                     jobs=args.jobs, out_dir=args.out)
    if not rank0:
        return 1 if table.failures else 0
    print(table.markdown())
    if args.json:
        from grafs.files import atomic_write_json
        # strict JSON: null where a row has no mean or SEM (Python's json writes NaN)
        atomic_write_json(args.json, _no_nan(table.to_dict()), "the evaluation table", indent=1)
    if args.plot and acts:
        from grafs.plot import plot_activations
        plot_activations(acts, args.plot, baselines=["relu(x)", "gelu(x)", "silu(x)", "elu(x)", "leaky_relu(x)"])
    return 1 if table.failures else 0


_SET_HELP = ("task options and config fields, e.g. --set arch_lr=0.01 shrink_start_epoch=10 "
             "single_level=true (values parse as JSON, else as strings; search_<field> or "
             "eval_<field> changes one config only)")


def add_search_commands(sub) -> None:
    from grafs.tasks import list_tasks
    s = sub.add_parser("search", help="run a GRAFS search on a built-in offline task")
    s.add_argument("--task", default="mnist1d", choices=list_tasks())
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--teacher", default=None, metavar="FORMULA",
                   help="--task teacher: the teacher network's activation (default tanh(x))")
    s.add_argument("--epochs", type=int, default=None, help="default: the task's search epochs")
    s.add_argument("--restarts", type=int, default=None, metavar="K",
                   help="run K searches (seeds SEED, SEED+1000, …) on one split and keep the one "
                        "with the lowest validation loss: at the end, or with the task's "
                        "restart_pick_epoch a race compared at that epoch; --set "
                        "restart_select=scratch compares their formulas trained from scratch "
                        "(default: the task's; on --task teacher 3, each on its own split, "
                        "picked from scratch; 1 elsewhere)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    s.add_argument("--out", default=None, help="directory for checkpoint and result")
    s.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    s.add_argument("--cell-mode", default="auto", choices=("auto", "c", "lean", "triton", "eager"),
                   help="relaxed-cell implementation (auto: Triton on CUDA, generated C on x86-64 "
                        "Linux CPUs, lean elsewhere)")
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (auto: CUDA when available)")
    s.add_argument("--amp", default=None, choices=("bf16", "fp16"),
                   help="mixed precision for the network (the cell computes in fp32)")
    s.add_argument("--plot", action="store_true", help="write activation.png and alpha.png")
    s.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write TensorBoard event files to DIR (needs grafs[tensorboard])")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    s.set_defaults(fn=_cmd_search)

    e = sub.add_parser("evaluate", help="train from scratch with each activation over seeds")
    e.add_argument("--task", default="mnist1d", choices=list_tasks())
    e.add_argument("--activations", nargs="*", help="formulas to evaluate")
    e.add_argument("--teacher", default=None, metavar="FORMULA",
                   help="--task teacher: the teacher network's activation (default tanh(x))")
    e.add_argument("--results", nargs="*", help="search result directories to evaluate")
    e.add_argument("--baselines", nargs="*", default=["ReLU", "GELU", "SiLU", "ELU", "LeakyReLU"],
                   help="ReLU GELU SiLU ELU LeakyReLU, in any spelling a formula accepts "
                        "(gelu, leaky_relu, swish)")
    e.add_argument("--scaled-baselines", action="store_true",
                   help="also evaluate the baselines times their op-normalisation constant "
                        "(1.412·ReLU, 1.530·GELU, ...): what a found formula gains by its scale")
    e.add_argument("--seeds", type=int, default=5)
    e.add_argument("--epochs", type=int, default=None)
    e.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    e.add_argument("--search-seconds", type=float, default=None,
                   help="search wall time for the search/evaluation ratio")
    e.add_argument("--json", default=None, help="also write the table as JSON")
    e.add_argument("--jobs", type=int, default=1,
                   help="training runs in parallel worker processes (one GPU each when several)")
    e.add_argument("--out", default=None, metavar="DIR",
                   help="cache finished runs in DIR/runs/; a re-run skips them")
    e.add_argument("--plot", default=None, help="PNG of the activations against the baselines")
    e.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write TensorBoard event files to DIR (needs grafs[tensorboard])")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (auto: CUDA when available)")
    e.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    e.set_defaults(fn=_cmd_evaluate)
