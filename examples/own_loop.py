"""Search an activation function inside your own PyTorch training loop (grafs.Searcher).

grafs.search owns its training loop. When your model trains in a loop of its own (your data
pipeline, losses, optimizer, scheduler, AMP, gradient clipping, ...), let a grafs.Searcher
ride along instead: it swaps the model's activations for the relaxed GRAFS cell, owns α/γ,
their optimizer, the Dirichlet draws and the shrink schedule, and your loop calls it at four
places. This script is such a loop, written out:

    python examples/own_loop.py             # a small MLP on synthetic data, about a minute
    python examples/own_loop.py --tiny      # seconds (used by the tests)

Where the recipes coincide (the same data order, seeds, optimizer and loss), this loop finds
the formula grafs.searching.loop.search finds: both drive the same Searcher calls.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grafs


def search_in_own_loop(model: nn.Module, train_loader, val_loader, *, epochs: int, seed: int = 0,
                       lr: float = 1e-3, **searcher_options) -> grafs.SearchResult:
    """A plain training loop with the four Searcher calls (marked ◀). ``searcher_options``
    go to grafs.Searcher (space, arch_lr, warmstart_epochs, cell_mode, ...)."""
    torch.manual_seed(seed)        # the Dirichlet draws come from torch's global RNG
    searcher = grafs.Searcher(model, epochs=epochs, seed=seed, **searcher_options)  # ◀ swaps the activations
    optimizer = torch.optim.Adam(searcher.weight_parameters(), lr=lr)
    loss_fn = nn.functional.cross_entropy
    for epoch in range(epochs):
        searcher.epoch_start(epoch)     # ◀ drops ops on the schedule; warm start in epoch 0
        model.train()
        val_batches = _cycle(val_loader)    # arch steps take validation batches in turn
        for xb, yb in train_loader:
            xv, yv = next(val_batches)
            # ◀ arch step: the loss on a validation batch; α/γ take an Adam step, the
            # weights are frozen meanwhile (they get no gradient from it)
            searcher.arch_step(lambda: loss_fn(model(xv), yv))
            with searcher.weight_step():        # ◀ α/γ frozen: only the weights get gradients
                loss = loss_fn(model(xb), yb)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        val_loss = evaluate(model, val_loader, loss_fn)
        formula = searcher.epoch_end(val_loss=val_loss)   # ◀ history; the leading formula
        print(f"epoch {epoch + 1}/{epochs}  ops {searcher.cell.num_active():>3}  "
              f"val {val_loss:.4f}  {formula}")
    return searcher.result()


def _cycle(loader):
    """The loader's batches over and over (a fresh pass when one ends)."""
    while True:
        yield from loader


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn) -> float:
    model.eval()
    total, n = 0.0, 0
    for xb, yb in loader:
        total += float(loss_fn(model(xb), yb)) * len(xb)
        n += len(xb)
    model.train()
    return total / n


def make_data(n: int, features: int = 8, classes: int = 4, seed: int = 0):
    """A synthetic classification set: a fixed random two-layer teacher's argmax."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w1, w2 = torch.randn(features, 32, generator=g), torch.randn(32, classes, generator=g)
    return x, (torch.tanh(x @ w1) @ w2).argmax(-1)


def make_model(features: int = 8, classes: int = 4, width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width),
                         nn.ReLU(), nn.Linear(width, classes))


def loaders(x, y, batch_size: int, seed: int):
    """75/25 split; the training batches shuffled by a seeded generator of their own."""
    k = len(x) * 3 // 4
    train = DataLoader(TensorDataset(x[:k], y[:k]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(x[k:], y[k:]), batch_size=batch_size,
                     generator=torch.Generator().manual_seed(seed + 1))
    return train, val


def parser(description: str) -> argparse.ArgumentParser:
    """The options of this example (and of lightning_search.py, on the same data)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (used by the tests)")
    return p


def tiny(args) -> dict:
    """--tiny: fewer samples and epochs and a small search space (far below the budget α
    needs: only for tests); the Searcher options."""
    if not args.tiny:
        return {}
    args.samples, args.epochs = 256, 3
    return dict(space=grafs.SearchSpace("B(U(x), U(x))", unary=["relu", "gelu", "tanh"],
                                        binary=["add", "max"]))


def main(argv: list[str] | None = None) -> grafs.SearchResult:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    options = tiny(args)
    x, y = make_data(args.samples, seed=args.seed)
    torch.manual_seed(args.seed)
    model = make_model()
    train, val = loaders(x, y, batch_size=64, seed=args.seed)
    result = search_in_own_loop(model, train, val, epochs=args.epochs, seed=args.seed, **options)
    print(f"use: {result.formula}")
    return result


if __name__ == "__main__":
    main()
