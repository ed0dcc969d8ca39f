"""A search step driven from your own loop or a Lightning callback, over a grafs.search step,
measured side by side in one run.

Per step (medians over interleaved blocks of ``--inner`` steps, after warm-up):

* ``grafs.search``: ``Stepper.step``, what grafs.searching.loop.search runs per batch;
* ``own loop``: the same step through grafs.Searcher's public calls (``arch_step`` with a
  closure, ``with weight_step():`` forward and backward, ``optimizer.step()``, ``zero_grad``),
  as examples/own_loop.py writes it.

Per step of whole fits over the same batches (``--epochs`` × ``--steps`` steps, one
validation pass per epoch; the first epoch's weight steps warm-start with the original
activation in both):

* ``grafs.searching.loop.search`` against ``Trainer.fit`` with ``GrafsSearch`` (the Lightning
  callback, ``pip install grafs[lightning]``), each next to its loop without a search (a plain
  PyTorch loop; ``Trainer.fit`` without the callback), so the table also gives what the
  search adds to each.

    python -m bench.own_loop                     # an MLP on the CPU (1 thread)
    python -m bench.own_loop --width 512 --batch 256
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grafs
from bench.timing import device, round_robin, table
from grafs.runtime.space import SearchSpace
from grafs.searching.step import Stepper


def make_model(width: int, features: int = 40, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, classes))


def make_data(n: int, features: int = 40, classes: int = 10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return x, (x @ torch.randn(features, classes, generator=g)).argmax(-1)


def step_times(args, dev) -> tuple[float, float]:
    """(grafs.search step, own-loop step) seconds per step."""
    loss_fn = nn.functional.cross_entropy
    x, y = (t.to(dev) for t in make_data(4 * args.batch))
    xb, yb, xv, yv = x[:args.batch], y[:args.batch], x[args.batch:2 * args.batch], y[args.batch:2 * args.batch]

    def build():
        model = make_model(args.width).to(dev)
        s = grafs.Searcher(model, epochs=10, space=SearchSpace.grafs(normalize=True), device=dev)
        s.epoch_start(1)                    # past the warm start: the weight steps use the cell
        return model, s, torch.optim.Adam(s.weight_parameters(), lr=1e-3)

    m1, s1, opt1 = build()
    stepper = Stepper.of(s1, opt1, None, loss_fn)
    m2, s2, opt2 = build()

    def loop_step():
        stepper.step(xb, yb, xv, yv, warm=False)

    def own_step():
        s2.arch_step(lambda: loss_fn(m2(xv), yv))
        with s2.weight_step():
            loss_fn(m2(xb), yb).backward()
        opt2.step()
        opt2.zero_grad(set_to_none=True)

    def block(fn):
        return lambda: [fn() for _ in range(args.inner)]
    a, b = round_robin([block(loop_step), block(own_step)], dev, warmup=2, repeats=args.repeats)
    return a / args.inner, b / args.inner


def fit_times(args) -> dict[str, float] | None:
    """Seconds per step of whole fits: loop.search, a plain loop, Lightning with and without
    GrafsSearch (None without Lightning)."""
    try:
        import lightning as L
    except ImportError:
        return None
    import logging
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)      # its per-fit banners
    from grafs.integrations.lightning import GrafsSearch
    from grafs.searching.loop import search as loop_search
    n = args.steps * args.batch
    x, y = make_data(n + n // 4)
    train = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=args.batch, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[n:], y[n:]), batch_size=args.batch)
    loss_fn = nn.functional.cross_entropy
    space = SearchSpace.grafs(normalize=True)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_model(args.width)

        def training_step(self, batch, batch_idx):
            return loss_fn(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", loss_fn(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    def lightning(search: bool):
        t = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[GrafsSearch(space=space)] if search else [])
        t.fit(Module(), train, val)

    def search():
        loop_search(make_model(args.width), train, val, space=space, epochs=args.epochs,
                    arch_lr=3e-2, arch_weight_decay=0.0, progress=False, loss_fn=loss_fn,
                    optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3))

    def plain():
        model = make_model(args.width)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(args.epochs):
            model.train()
            for xb, yb in train:
                loss_fn(model(xb), yb).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            model.eval()
            with torch.no_grad():
                sum(float(loss_fn(model(xv), yv)) for xv, yv in val)

    runs = {"loop.search": search, "plain loop": plain,
            "Lightning + GrafsSearch": lambda: lightning(True), "Lightning": lambda: lightning(False)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.fit_repeats):           # interleaved: drifting load hits each alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / (args.epochs * args.steps))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--inner", type=int, default=10, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=15, help="timed blocks per kind of step")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each fit")
    p.add_argument("--steps", type=int, default=60, help="training steps per epoch of each fit")
    p.add_argument("--fit-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = device()
    import warnings
    warnings.filterwarnings("ignore")           # short searches, Lightning's tips

    loop_s, own_s = step_times(args, dev)
    print(f"MLP 40-{args.width}-{args.width}-10, batch {args.batch}, {dev}, "
          f"{torch.get_num_threads()} thread(s); the paper's 110-op cell")
    print(table([["grafs.search (Stepper.step)", f"{loop_s * 1e3:.2f}", "1.00"],
                 ["own loop (Searcher calls)", f"{own_s * 1e3:.2f}", f"{own_s / loop_s:.2f}"]],
                ["search step", "ms/step", "/ grafs.search"]))
    fits = fit_times(args)
    if fits is None:
        print("\n(Lightning not installed: pip install grafs[lightning] for the fit rows)")
        return
    s, L, pl, lp = (fits[k] for k in ("loop.search", "Lightning + GrafsSearch", "plain loop", "Lightning"))
    print()
    print(table([["loop.search", f"{s * 1e3:.2f}", "1.00", f"{(s - pl) * 1e3:.2f}"],
                 ["Lightning + GrafsSearch", f"{L * 1e3:.2f}", f"{L / s:.2f}", f"{(L - lp) * 1e3:.2f}"],
                 ["plain loop (no search)", f"{pl * 1e3:.2f}", f"{pl / s:.2f}", ""],
                 ["Lightning (no search)", f"{lp * 1e3:.2f}", f"{lp / s:.2f}", ""]],
                ["whole fit", "ms/step", "/ loop.search", "search adds ms/step"]))
    print(f"\nthe search's own cost, Lightning callback / grafs.search loop: "
          f"{(L - lp) / (s - pl):.2f}")


if __name__ == "__main__":
    main()
