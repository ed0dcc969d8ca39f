"""Search an activation function for your own model and data.

Here the model is a small torchvision-style CNN (conv-BN-ReLU blocks, global pooling, a linear
head) and the data are image tensors (a synthetic 10-class set standing in for yours):

    python examples/search_own_model.py                     # a few minutes of one CPU core
    python examples/search_own_model.py --out runs/cnn      # keep the result for the other examples
    python examples/search_own_model.py --restarts 3        # three searches, picked from scratch

grafs.search swaps every activation module of the usual types (nn.ReLU, nn.GELU, ...) for the
relaxed GRAFS cell, trains it bilevel and returns one formula. It sizes the search from the
data (budget="auto"), checks that the formula trains from scratch with your settings, and
compares it with your ReLU over three from-scratch trainings (result.verdict). A model that
calls F.relu instead of a module declares its activations as grafs.Act("relu").
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import grafs


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (the second and third stride 2), global pooling, a linear head."""

    def __init__(self, classes: int = 10, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(3, width, 1), block(width, 2 * width, 2),
                                      block(2 * width, 2 * width, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_data(n: int, size: int, classes: int = 10, seed: int = 0):
    """Images (n, 3, size, size) and labels: a fixed random pattern per class under heavy noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = patterns[y] + 2.0 * torch.randn(n, 3, size, size, generator=g)
    return x, y


def main(argv: list[str] | None = None) -> grafs.SearchResult:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--size", type=int, default=16, help="image height and width")
    p.add_argument("--width", type=int, default=16, help="channels of the first block")
    p.add_argument("--epochs", type=int, default=None, help="default: sized from the data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="save the result here (grafs.SearchResult.load reads it)")
    p.add_argument("--restarts", type=int, default=1,
                   help="K > 1: K searches on one split, the one whose formula trains best from "
                        "scratch kept")
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (used by the tests)")
    args = p.parse_args(argv)
    if args.tiny:
        args.samples, args.size, args.width = 96, 8, 4

    x, y = make_data(args.samples, args.size, seed=args.seed)
    torch.manual_seed(args.seed)
    model = SmallCNN(width=args.width)
    # 75/25 train/validation split of (x, y); the epochs sized from it unless given
    kwargs = dict(epochs=args.epochs, batch_size=64, seed=args.seed, progress=not args.tiny,
                  restarts=args.restarts)
    if args.tiny:       # seconds, not minutes: below the budget α needs, so only for tests
        kwargs.update(epochs=args.epochs or 2, budget="as_given", verdict_seeds=1)
    result = grafs.search(model, (x, y), **kwargs)
    for r in result.history.get("restarts", []):
        print(f"{'*' if r['chosen'] else ' '} seed {r['seed']:>5}  from scratch {r['score']}  {r['formula']}")
    print(f"use: {result.formula}")
    print(f"     ({result.display} rounded)")
    if result.verdict is not None:
        print(result.verdict)
    if args.out:
        print(f"saved to {result.save(args.out)}")
    return result


if __name__ == "__main__":
    main()
