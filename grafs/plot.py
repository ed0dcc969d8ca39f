"""PNG plots of activation functions and their derivatives (matplotlib is an optional extra)."""
from __future__ import annotations

from typing import Sequence

import torch

from grafs.errors import GrafsError


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise GrafsError("plotting needs matplotlib: pip install 'grafs[plots]'") from err
    return plt


def check_plot_path(path) -> None:
    """A GrafsError unless ``path`` names a file matplotlib can write (a known image suffix)
    in an existing folder: checked before the work whose plot it is."""
    from pathlib import Path
    _plt()
    from matplotlib.backend_bases import FigureCanvasBase
    p = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()     # (no figure made, none closed)
    if p.suffix.lstrip(".").lower() not in formats:
        raise GrafsError(f"cannot plot to {path}: its suffix is not an image format matplotlib "
                         f"writes (use .png, .pdf or .svg; all: {', '.join(sorted(formats))})")
    if not p.parent.is_dir():
        raise GrafsError(f"cannot plot to {path}: the folder {p.parent} does not exist")


def _save(fig, path, dpi: int) -> None:
    plt = _plt()
    try:
        check_plot_path(path)
        fig.savefig(path, dpi=dpi)
    except OSError as err:
        raise GrafsError(f"cannot write the plot {path}: {err.strerror or err}") from None
    finally:
        plt.close(fig)


def function_and_derivative(expr, lo: float = -5.0, hi: float = 5.0, n: int = 1001):
    """(x, f(x), f'(x)) as float64 tensors, f' from autograd through the eager backend."""
    from grafs.grammar.parser import parse
    from grafs.compiler import compile as gcompile
    act = gcompile(parse(expr), backend="eager").double()
    x = torch.linspace(lo, hi, n, dtype=torch.float64, requires_grad=True)
    y = act(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    return x.detach(), y.detach(), g


def plot_activations(exprs: Sequence, path: str, labels: Sequence[str] | None = None,
                     baselines: Sequence[str] = (), lo: float = -5.0, hi: float = 5.0,
                     title: str | None = None) -> str:
    """Plot each formula (and optional baseline formulas, dashed) with its derivative."""
    _save(activations_figure(exprs, labels, baselines, lo, hi, title), path, 120)
    return path


def activations_figure(exprs: Sequence, labels: Sequence[str] | None = None,
                       baselines: Sequence[str] = (), lo: float = -5.0, hi: float = 5.0,
                       title: str | None = None, figsize: tuple[float, float] = (11, 4.2)):
    """The matplotlib figure of :func:`plot_activations` (the caller closes it)."""
    plt = _plt()
    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=figsize)
    labels = list(labels) if labels is not None else [str(e) for e in exprs]
    for e, lab, style in [(e, l, "-") for e, l in zip(exprs, labels)] + \
                         [(b, b, "--") for b in baselines]:
        x, y, g = function_and_derivative(e, lo, hi)
        short = lab if len(lab) <= 60 else lab[:57] + "…"
        ax_f.plot(x, y, style, label=short, linewidth=1.6 if style == "-" else 1.0)
        ax_d.plot(x, g, style, label=short, linewidth=1.6 if style == "-" else 1.0)
    for ax, t in ((ax_f, "f(x)"), (ax_d, "f'(x)")):
        ax.set_title(t)
        ax.axhline(0, color="0.8", linewidth=0.8)
        ax.axvline(0, color="0.8", linewidth=0.8)
        ax.grid(alpha=0.3)
    ax_f.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_alpha_history(result, path: str, space=None) -> str:
    """Per hole, the α of every op over the epochs (dropped ops end where they were dropped),
    and, dashed on the right axis, the normalised entropy of the Dirichlet mean
    (grafs.runtime.entropy.normalized_entropy: 1 = the ops are not told apart yet). ``space``: the
    search's SearchSpace (default: the result's template with the default GRAFS ops)."""
    plt = _plt()
    hist = result.history
    alphas = hist["alpha"]  # [epoch][hole][op]
    n_holes = len(alphas[0])
    from grafs.runtime.space import SearchSpace
    s = result.settings
    space = space or SearchSpace(s.get("template", "B(U(B(U(x), U(x))), U(x))"))
    if [len(h.ops) for h in space.holes] != [len(a) for a in alphas[0]]:
        raise GrafsError("the search space does not match the result's α (ops per hole "
                         f"{[len(h.ops) for h in space.holes]} vs {[len(a) for a in alphas[0]]}); "
                         "pass the search's space as space=")
    dropped = {(h, op): e for e, h, op in hist.get("dropped", [])}
    fig, axes = plt.subplots(1, n_holes, figsize=(3.2 * n_holes, 3.2), squeeze=False)
    for hi, ax in enumerate(axes[0]):
        hole = space.holes[hi]
        for oi, op in enumerate(hole.ops):
            end = dropped.get((hole.name, op), len(alphas))
            ys = [alphas[e][hi][oi] for e in range(min(end + 1, len(alphas)))]
            ax.plot(range(len(ys)), ys, linewidth=1.0, label=op if len(hole.ops) <= 10 else None)
        ax.set_title(hole.name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if hist.get("entropy"):
            ent = ax.twinx()
            ent.plot([h[hi] for h in hist["entropy"]], "k--", linewidth=1.2)
            ent.set_ylim(-0.02, 1.02)
            if hi == n_holes - 1:
                ent.set_ylabel("entropy / log(#ops) (dashed)")
    axes[0][0].set_ylabel("α")
    fig.tight_layout()
    _save(fig, path, 110)
    return path
