"""Formulas drawn uniformly at random from a task's search space: the control for a search.

If a search's drops were no better than chance, these should train as well as what it found
(docs/results-text.md). Per seed, every hole's α is drawn from N(0, 1) (``torch.Generator``
seeded with the seed) and the cell is discretised as a finished search would be: the
highest-α op per hole, the mix coefficients at their initial σ(γ), and in a normalised space
the op constants kept. So each hole's op is uniform over its candidates.

    python scripts/random_formulas.py --task text --seeds 1000 1001 1002
"""
from __future__ import annotations

import argparse

import torch


def random_alpha_cell(task_name: str, seed: int, **overrides):
    """``task_name``'s relaxed cell with every hole's α drawn from N(0, 1) (seeded by ``seed``,
    hole by hole in the space's order)."""
    from grafs.runtime.cell import RelaxedCell
    from grafs.tasks import get_task
    task = get_task(task_name, **overrides)
    space = task.make_search_space()
    space.normalize = task.search_config.normalize
    cell = RelaxedCell(space, mode="eager", seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in cell.alpha:
            a.copy_(torch.randn(a.shape, generator=g))
    return cell


def random_formula(task_name: str, seed: int, **overrides) -> str:
    """The formula of a uniformly random discretisation of ``task_name``'s search space."""
    return str(random_alpha_cell(task_name, seed, **overrides).discretize())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    args = ap.parse_args(argv)
    for s in args.seeds:
        print(f"{s}\t{random_formula(args.task, s)}")


if __name__ == "__main__":
    main()
