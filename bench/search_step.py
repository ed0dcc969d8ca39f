"""Time per GRAFS search step over time per plain training step, measured side by side in one run.

A *search step* is exactly what ``grafs.search`` runs per batch: ``grafs.searching.step.Stepper.step``
(arch step on a validation batch with the relaxed cell at every activation site, then the weight
step on a training batch with the cell; no warm-start), built the way ``search()`` builds it.
A *plain step* is forward, loss, backward, ``optimizer.step()``, ``zero_grad()`` of the same
model with its original activation, same batch size and weight optimizer. A search step runs two
forward+backward passes (the arch step and the weight step), so 2x is the floor of the ratio even
with a free cell. The cell is shrunk between stages with ``cell.drop`` (default 110 -> 54 -> 24
-> 6 active ops, i.e. drop 56, 30, 18); every mode's cell gets the same mask (and α, γ) as the
first mode's. Plain and search steps are timed interleaved (plain block, then each mode's block,
``--repeats`` times per stage) and each ratio uses that stage's plain median, so slow drift on
a busy machine hits both alike. Times are medians of per-step means over blocks of ``--inner``
steps, after warm-up; on CUDA the device is synchronized before every clock read.

    python -m bench.search_step                              # mnist1d on the CPU (1 thread)
    python -m bench.search_step --modes lean eager           # cell modes side by side
    python -m bench.search_step --device cuda                # resnet20 and vit_tiny
    python -m bench.search_step --configs mnist1d resnet20 vit_tiny --device cuda --modes auto lean
    python -m bench.search_step --full-search mnist1d digits # + full search vs full evaluation
    python -m bench.search_step --no-steps --full-search mnist1d digits textures inr --amortised
                                                             # + each search over its steady steps
    python -m bench.search_step --no-steps --full-search teacher --full-repeats 3 \
        --set search_epochs=30 shrink_start_epoch=4          # only that (search_: not the eval run)

``--full-search TASK ...`` also runs a full default search (``grafs.protocol.task_search.search_task``) and a
full default evaluation training run of the task's model with its default activation
(``Task.fit`` with ``eval_config``, what ``grafs.evaluate`` times per run) and prints the
search/evaluation wall-time ratio per task.

The ATen table counts the dispatcher ops of one cell call (forward, then backward) on an input
of a representative site's shape (the median site by size), with α/γ trainable (arch step) and
frozen (weight step); a custom (torch.library) op counts as one, and kernels launched directly
from Python (the Triton cell's, outside torch.compile) are not dispatcher ops and not counted.
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
from collections import Counter

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import grafs
from bench.timing import sync, table
from grafs.models import resnet20, vit_tiny
from grafs.runtime.space import SearchSpace
from grafs.searching.sites import DEFAULT_TYPES, SearchSite, replace_activations
from grafs.searching.step import Stepper

STAGES = (110, 54, 24, 6)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# configs: how to build the model, its data and optimizers
class Config:
    name: str
    batch_size: int
    activation_types: tuple = DEFAULT_TYPES
    n_batches = 4                     # distinct batches cycled through (train and val each)

    def make_model(self) -> nn.Module:
        raise NotImplementedError

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=1e-3)

    def make_arch_optimizer(self, params) -> torch.optim.Optimizer:   # search()'s defaults
        return torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999), weight_decay=1e-3)

    def loss_fn(self, out, y):
        return nn.functional.cross_entropy(out, y)

    def batches(self, dev):
        """(train batches, val batches), lists of (x, y) already on ``dev``."""
        raise NotImplementedError

    def describe(self) -> str:
        return ""


class TaskConfig(Config):
    """A built-in task's model, data split and optimizers (its search defaults)."""

    def __init__(self, name: str, task=None):
        from grafs.tasks import get_task
        self.name = name
        self.task = task if task is not None else get_task(name)
        self.cfg = self.task.search_config
        self.batch_size = self.cfg.batch_size
        self.activation_types = tuple(self.task.activation_types)

    def make_model(self):
        return self.task.make_model(seed=0)

    def make_optimizer(self, params):
        return self.cfg.make_optimizer(params)

    def make_arch_optimizer(self, params):
        return self.cfg.make_arch_optimizer(params)

    def loss_fn(self, out, y):
        return self.task.loss_fn(out, y)

    def batches(self, dev):
        (xt, yt), (xv, yv) = self.task.search_split(seed=0)
        b = self.batch_size
        take = lambda x, y: [(x[i * b:(i + 1) * b].to(dev), y[i * b:(i + 1) * b].to(dev))
                             for i in range(self.n_batches)]
        return take(xt, yt), take(xv, yv)

    def describe(self):
        return (f"the task's CNN, search_split data, batch {self.batch_size}, "
                f"weights {self.cfg.optimizer}(lr={self.cfg.lr}), arch Adam(lr={self.cfg.arch_lr})")


class _Image32Config(Config):
    batch_size = 128
    num_classes = 10

    def batches(self, dev):
        g = torch.Generator().manual_seed(0)
        mk = lambda: [(torch.randn(self.batch_size, 3, 32, 32, generator=g).to(dev),
                       torch.randint(0, self.num_classes, (self.batch_size,), generator=g).to(dev))
                      for _ in range(self.n_batches)]
        return mk(), mk()


class Resnet20Config(_Image32Config):
    name = "resnet20"

    def make_model(self):
        torch.manual_seed(0)
        return resnet20(num_classes=self.num_classes, in_channels=3)

    def make_optimizer(self, params):
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)

    def describe(self):
        return (f"random 3x32x32 inputs, batch {self.batch_size}, {self.num_classes} classes, "
                f"weights SGD(lr=0.05, momentum=0.9), arch Adam(lr=1e-3)")


class VitTinyConfig(_Image32Config):
    name = "vit_tiny"

    def make_model(self):
        torch.manual_seed(0)
        return vit_tiny(num_classes=self.num_classes, img_size=32, in_channels=3)

    def describe(self):
        return (f"random 3x32x32 inputs, batch {self.batch_size}, {self.num_classes} classes, "
                f"weights Adam(lr=1e-3), arch Adam(lr=1e-3)")


CONFIGS = {"mnist1d": lambda: TaskConfig("mnist1d"), "teacher": lambda: TaskConfig("teacher"),
           "digits": lambda: TaskConfig("digits"), "resnet20": Resnet20Config,
           "vit_tiny": VitTinyConfig}


# ---------------------------------------------------------------------------------------------
# the two kinds of step
class PlainStep:
    def __init__(self, conf: Config, dev):
        self.model = conf.make_model().to(dev).train()
        self.opt = conf.make_optimizer(self.model.parameters())
        self.loss_fn = conf.loss_fn

    def __call__(self, xb, yb, xv, yv):
        loss = self.loss_fn(self.model(xb), yb)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class SearchStep:
    """The pieces of grafs.searching.search() around one Stepper."""

    def __init__(self, conf: Config, dev, mode: str, space: SearchSpace):
        model = conf.make_model().to(dev).train()
        self.cell = cell = space.relax(mode=mode, seed=0).to(dev)
        self.state = state = {"use_cell": True}
        self.n_sites = replace_activations(model, lambda orig: SearchSite(orig, cell, state),
                                           conf.activation_types)
        arch_params = list(cell.arch_parameters())
        arch_ids = {id(p) for p in arch_params}
        weights = [p for p in model.parameters() if id(p) not in arch_ids]
        w_opt = conf.make_optimizer(weights)
        a_opt = conf.make_arch_optimizer(arch_params)
        self.model, self.arch_params = model, arch_params
        # n_sites: the cell draws one batch of samples per pass (grafs versions that have it)
        extra = ({"n_sites": self.n_sites}
                 if "n_sites" in inspect.signature(Stepper).parameters else {})
        self.stepper = Stepper(model, cell, state, weights, arch_params, w_opt, a_opt, None,
                                conf.loss_fn, dev, **extra)

    def __call__(self, xb, yb, xv, yv):
        self.stepper.step(xb, yb, xv, yv, warm=False, update=True)

    def site_shapes(self, xb) -> list[tuple[int, ...]]:
        shapes = []
        hooks = [m.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
                 for m in self.model.modules() if isinstance(m, SearchSite)]
        try:
            with torch.no_grad():
                self.model(xb)
        finally:
            for h in hooks:
                h.remove()
        return shapes


# ---------------------------------------------------------------------------------------------
# timing and op counting
class Timer:
    """Per-step seconds of blocks of ``inner`` steps, cycling through the batches."""

    def __init__(self, train, val, dev, inner: int):
        self.train, self.val, self.dev, self.inner = train, val, dev, inner
        self.i = 0

    def block(self, fn, n: int | None = None) -> float:
        n = self.inner if n is None else n
        sync(self.dev)
        t = time.perf_counter()
        for _ in range(n):
            (xb, yb), (xv, yv) = self.train[self.i % len(self.train)], self.val[self.i % len(self.val)]
            self.i += 1
            fn(xb, yb, xv, yv)
        sync(self.dev)
        return (time.perf_counter() - t) / n


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops["aten" if func.namespace == "aten" else "custom"] += 1
        return func(*args, **(kwargs or {}))

    def text(self) -> str:
        s = str(self.ops["aten"])
        return s + (f"(+{self.ops['custom']})" if self.ops["custom"] else "")


def count_cell_ops(cell, shape, dev, arch: bool) -> str:
    """'fwd+bwd' dispatcher ops of one cell call on a fresh input of ``shape``. As in a search,
    the call's mixture weights are drawn beforehand when the cell batches its samples
    (``refresh_samples``), so forward counts the cell body; backward includes the sample's."""
    params = list(cell.arch_parameters())
    if not arch:
        for p in params:
            p.requires_grad_(False)
    try:
        x = torch.randn(shape, device=dev, requires_grad=True)
        if hasattr(cell, "refresh_samples"):
            cell.refresh_samples(1)
        fwd, bwd = OpCount(), OpCount()
        with fwd:
            y = cell(x)
        g = torch.ones_like(y)
        with bwd:
            y.backward(g)
        sync(dev)
    finally:
        if hasattr(cell, "clear_samples"):
            cell.clear_samples()
        for p in params:
            p.requires_grad_(True)
            p.grad = None
    return f"{fwd.text()}+{bwd.text()}"


def count_sampling_ops(cell, n_sites: int) -> str:
    """Dispatcher ops of drawing the samples of one pass (forward only): one batched draw for
    all sites where the cell has ``refresh_samples``, else one draw per site."""
    c = OpCount()
    with torch.no_grad(), c:
        if hasattr(cell, "refresh_samples"):
            cell.refresh_samples(n_sites)
        else:
            for _ in range(n_sites):
                cell.sample_weights()
    if hasattr(cell, "clear_samples"):
        cell.clear_samples()
    return c.text()


def cpu_stage_bench(ap):
    """The set-up bench.step_parts and bench.math_floor share: ``ap``'s arguments (with
    ``--stages``, decreasing, and ``--steps``), one thread, and the mnist1d CNN's task config,
    space, timer and plain step: (args, device, config, space, timer, plain)."""
    a = ap.parse_args()
    if a.stages != sorted(a.stages, reverse=True):
        ap.error("--stages must be decreasing (each stage drops ops from the last)")
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    conf = TaskConfig("mnist1d")
    train, val = conf.batches(dev)
    return a, dev, conf, SearchSpace.grafs(), Timer(train, val, dev, a.steps), PlainStep(conf, dev)


def ms(t: float) -> str:
    return f"{t * 1e3:.2f}" if t < 0.1 else f"{t * 1e3:.1f}"


# ---------------------------------------------------------------------------------------------
def bench_config(conf: Config, dev, modes, stages, repeats: int, inner: int, warmup: int):
    space = SearchSpace.grafs()
    train, val = conf.batches(dev)
    timer = Timer(train, val, dev, inner)
    plain = PlainStep(conf, dev)
    searches = {}
    for m in modes:
        torch.manual_seed(0)
        searches[m] = SearchStep(conf, dev, m, space)
    ref = searches[modes[0]].cell
    for s in searches.values():
        s.cell.load_state_dict(ref.state_dict())
    # what auto runs here (on a CPU without the C cell it switches lean -> eager for small
    # inputs late in a search: RelaxedCell.mode_for)
    def _runs(m, cell):
        mode = cell.mode_for(dev, 1)
        return "lean|eager" if m == "auto" and dev.type == "cpu" and mode in ("lean", "eager") else mode
    run_modes = {m: _runs(m, s.cell) for m, s in searches.items()}
    shapes = searches[modes[0]].site_shapes(train[0][0])
    shape = sorted(shapes, key=lambda s: (torch.Size(s).numel(), s))[len(shapes) // 2]
    log(f"[{conf.name}] {searches[modes[0]].n_sites} activation sites {sorted(set(shapes))}; "
        f"counting cell ops on {shape}")

    rows, op_rows, all_plain = [], [], []
    for stage in stages:
        if stage > ref.num_active():
            log(f"[{conf.name}] stage {stage} > {ref.num_active()} active ops: skipped")
            continue
        ref.drop(ref.num_active() - stage)
        for s in searches.values():
            if s.cell is not ref:
                s.cell.load_state_dict(ref.state_dict())
            assert s.cell.num_active() == stage, (s.cell.num_active(), stage)
        t0 = time.perf_counter()
        timer.block(plain, warmup)
        for m, s in searches.items():
            t1 = time.perf_counter()
            timer.block(s, 1)     # first call (compiles, builds plans): reported separately
            first = time.perf_counter() - t1
            s.cell.finish_builds()    # the C builds of this set (one-pass kernel too): steady state
            if warmup > 1:
                timer.block(s, warmup - 1)
            log(f"[{conf.name}] {stage:>3} ops {m}: first step {first:.2f} s")
        tp, ts = [], {m: [] for m in searches}
        for _ in range(repeats):
            tp.append(timer.block(plain))
            for m, s in searches.items():
                ts[m].append(timer.block(s))
        p = statistics.median(tp)
        all_plain += tp
        row = [str(stage), ms(p)]
        for m in searches:
            t = statistics.median(ts[m])
            row += [ms(t), f"{t / p:.1f}x"]
        rows.append(row)
        log(f"[{conf.name}] {stage:>3} ops: plain {ms(p)} ms; "
            + ", ".join(f"{m} {ms(statistics.median(v))} ms" for m, v in ts.items())
            + f"  ({time.perf_counter() - t0:.1f} s)")
        op_row = [str(stage), count_sampling_ops(ref, searches[modes[0]].n_sites)]
        for m, s in searches.items():
            op_row += [count_cell_ops(s.cell, shape, dev, arch=True),
                       count_cell_ops(s.cell, shape, dev, arch=False)]
        op_rows.append(op_row)

    names = [m if run_modes[m] == m else f"{m}->{run_modes[m]}" for m in searches]
    header = ["active ops", "plain ms"]
    for n in names:
        header += [f"{n} ms", f"{n} / plain"]
    op_header = ["active ops", "sample draw per pass"]
    for n in names:
        op_header += [f"{n} arch call", f"{n} weight call"]
    plain_med = statistics.median(all_plain)
    print(f"\n### {conf.name}: search step / plain step\n")
    print(f"model {type(plain.model).__name__}, {searches[modes[0]].n_sites} activation sites, "
          f"{conf.describe()}; measured plain step (original activation) = {ms(plain_med)} ms "
          f"(median of all {len(all_plain)} samples); {repeats} samples x {inner} steps per stage "
          f"after {warmup} warm-up steps\n")
    print(table(rows, header))
    print(f"\nATen ops dispatched by one cell call, forward+backward, x of shape {tuple(shape)} "
          f"(arch call: α, γ trainable; weight call: α, γ frozen; mixture weights drawn "
          f"beforehand as a search does, the draw for all {searches[modes[0]].n_sites} sites of a "
          f"pass counted separately; (+n): custom ops; Triton kernels launched directly are not "
          f"counted):\n")
    print(table(op_rows, op_header), flush=True)


def warm_imports() -> None:
    """Import what the first optimizer step of a process imports (``torch._dynamo``, through
    the optimizers' ``_disable_dynamo`` wrapper: about a second here) before anything is timed,
    so that neither the search nor the evaluation run timed first in this process pays it.
    (``grafs search`` and ``grafs evaluate``, separate processes, each pay it once.)"""
    import torch._dynamo  # noqa: F401


def steady_steps(task, res, dev, steps: int = 5, blocks: int = 3) -> dict:
    """Seconds of one steady search step (C builds done, warmed up) of ``task``'s default search
    at each (active ops, warm start) its epochs ran with (``res.history``): the bench's
    :class:`SearchStep` (the Stepper a search runs) on the task's model, batches and search
    space, the cell shrunk to each count in turn. Median of ``blocks`` blocks of ``steps``."""
    cfg = task.search_config
    space = task.make_search_space()
    space.normalize = cfg.normalize
    conf = TaskConfig(task.name, task)
    train, val = conf.batches(dev)
    timer = Timer(train, val, dev, steps)
    torch.manual_seed(0)
    s = SearchStep(conf, dev, "auto", space)
    warm_epochs = res.settings.get("warmstart_epochs", cfg.warmstart_epochs)
    configs = sorted({(n, e < warm_epochs) for e, n in enumerate(res.history["num_active"])},
                     key=lambda c: (-c[0], c[1]))
    out = {}
    for n, warm in configs:
        s.cell.drop(s.cell.num_active() - n)
        fn = (lambda xb, yb, xv, yv: s.stepper.step(xb, yb, xv, yv, warm=True)) if warm else s
        timer.block(fn, 1)                       # starts the build of this active set
        s.cell.finish_builds()                   # wait for them: the steady state
        timer.block(fn, 2)
        out[(n, warm)] = statistics.median(timer.block(fn) for _ in range(blocks))
    return out


def full_search(names, dev, overrides=None, repeats: int = 1, amortised: bool = False) -> None:
    """Per task: ``repeats`` × (a full search, then a full evaluation run), interleaved so that
    drift on a busy machine hits both; the ratio uses the medians. ``amortised``: also the
    search's wall time over the sum of its steps at their steady cost (:func:`steady_steps`,
    measured after the runs): what the per-epoch costs (the first C build, the validation
    pass, builds after drops, setup and the checks after the search) add to the steps."""
    import statistics
    from grafs.protocol.task_search import search_task
    from grafs.tasks import get_task
    warm_imports()
    rows, am_rows = [], []
    for name in names:
        task = get_task(name, **(overrides or {}))
        t_searches, t_evals = [], []
        for r in range(repeats):
            log(f"[full] {name}: search ({task.search_config.epochs} epochs), {r + 1}/{repeats} ...")
            t0 = time.perf_counter()
            res = search_task(task, seed=0, progress=False, device=dev)
            sync(dev)
            t_searches.append(time.perf_counter() - t0)
            log(f"[full] {name}: search {t_searches[-1]:.1f} s -> {res.formula}")
            model = task.make_model(seed=0).to(dev)
            log(f"[full] {name}: evaluation training ({task.eval_config.epochs} epochs) ...")
            t0 = time.perf_counter()
            task.fit(model, seed=0, device=dev)
            sync(dev)
            t_evals.append(time.perf_counter() - t0)
            log(f"[full] {name}: evaluation {t_evals[-1]:.1f} s")
        t_search, t_eval = statistics.median(t_searches), statistics.median(t_evals)
        sc, ec = task.search_config, task.eval_config
        n_tr = len(task.search_split(seed=0)[0][0])
        s_steps = sc.epochs * sc.steps_per_epoch(n_tr)
        e_steps = ec.total_steps(len(task.train_x))
        rows.append([name, f"{t_search:.1f}", f"{sc.epochs} / {s_steps}", f"{t_eval:.1f}",
                     f"{ec.epochs} / {e_steps}", f"{t_search / t_eval:.2f}",
                     f"{t_search / s_steps * 1e3:.1f} / {t_eval / e_steps * 1e3:.1f}",
                     f"`{res.formula}`"])
        if amortised:
            log(f"[full] {name}: steady steps ...")
            steady = steady_steps(task, res, dev)
            warm_epochs = res.settings.get("warmstart_epochs", sc.warmstart_epochs)
            spe = s_steps // sc.epochs
            t_steps = sum(spe * steady[(n, e < warm_epochs)]
                          for e, n in enumerate(res.history["num_active"]))
            am_rows.append([name, f"{t_search:.1f}", f"{t_steps:.1f}", f"{t_search / t_steps:.2f}",
                            " ".join(f"{n}{'w' if w else ''}:{t * 1e3:.1f}"
                                     for (n, w), t in steady.items())])
    extra = f", overrides {overrides}" if overrides else ""
    print(f"\n### full search vs full evaluation run (default activation; median of {repeats}"
          f"{extra})\n")
    print(table(rows, ["task", "search s", "search epochs / steps", "eval s", "eval epochs / steps",
                       "search / eval", "ms per step search / eval", "formula found"]), flush=True)
    if am_rows:
        print("\n### whole search vs its steps at their steady cost (per-epoch costs amortised)\n")
        print("steady step ms per (active ops, w: warm start) measured after the runs, same "
              "process; the search's wall time includes setup, the first C build, the "
              "validation passes, builds after drops and the checks after the search\n")
        print(table(am_rows, ["task", "search s", "sum of steady steps s", "search / steady",
                              "steady ms per step (active ops)"]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default 1 on the CPU, torch's default on CUDA)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed samples per stage and step kind (default 25 on CPU, 20 on CUDA)")
    ap.add_argument("--inner", type=int, default=None,
                    help="steps per timed sample (default 2 on CPU, 5 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="warm-up steps per stage and kind (default 3 on CPU, 5 on CUDA)")
    ap.add_argument("--modes", nargs="+", default=["auto"],
                    help="cell modes to compare (auto lean eager triton fused compile)")
    ap.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS),
                    help="default: mnist1d on the CPU; resnet20 vit_tiny on CUDA")
    ap.add_argument("--stages", type=int, nargs="+", default=list(STAGES), help="active ops per stage")
    ap.add_argument("--full-search", nargs="+", default=None, metavar="TASK",
                    help="also time a full default search and evaluation run of these tasks")
    ap.add_argument("--full-repeats", type=int, default=1,
                    help="--full-search: searches and evaluation runs per task (medians)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="--full-search: task overrides, as `grafs search --set`")
    ap.add_argument("--amortised", action="store_true",
                    help="--full-search: also each search's wall time over its steps at their "
                         "steady cost (what the per-epoch costs add)")
    ap.add_argument("--no-steps", action="store_true",
                    help="skip the per-step tables (with --full-search: only the full runs)")
    a = ap.parse_args()

    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench.search_step: --device cuda but CUDA is not available here")
    if a.threads is not None or dev.type == "cpu":
        torch.set_num_threads(a.threads or 1)
    cuda = dev.type == "cuda"
    configs = a.configs or (["resnet20", "vit_tiny"] if cuda else ["mnist1d"])
    repeats = a.repeats or (20 if cuda else 25)
    inner = a.inner or (5 if cuda else 2)
    warmup = a.warmup if a.warmup is not None else (5 if cuda else 3)
    from grafs.runtime.cell import MODES
    bad = [m for m in a.modes if m not in MODES]
    if bad:
        sys.exit(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    modes = list(dict.fromkeys(a.modes))
    if not cuda and "triton" in modes and os.environ.get("TRITON_INTERPRET") != "1":
        log("mode 'triton' needs CUDA (or TRITON_INTERPRET=1, far too slow to time): skipped")
        modes.remove("triton")

    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    print("# GRAFS search step vs plain training step\n")
    print(f"device {dev} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"grafs {getattr(grafs, '__version__', '?')}, modes {' '.join(modes)}, "
          f"stages {' '.join(map(str, a.stages))}", flush=True)
    if modes and not a.no_steps:
        for c in configs:
            bench_config(CONFIGS[c](), dev, modes, a.stages, repeats, inner, max(1, warmup))
    if a.full_search:
        from grafs.tasks.base import parse_overrides
        full_search(a.full_search, dev, parse_overrides(a.set), max(1, a.full_repeats),
                    a.amortised)


if __name__ == "__main__":
    main()
