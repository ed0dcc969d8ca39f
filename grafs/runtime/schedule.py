"""Progressive shrinking schedule (seeds/001 Appendix B, as the reference computes it)."""
from __future__ import annotations

import numpy as np

from grafs.errors import GrafsError


def shrink_schedule(n_ops: int, n_final: int, epochs: int, start: int) -> dict[int, int]:
    """Number of ops to drop at each epoch: ``{epoch: count}`` (epochs counted from 0).

    ``n_ops - n_final`` drop points are spaced on a log scale from epoch ``start`` to the last
    epoch, cast to int and counted per epoch, exactly as the reference does::

        start - 1 + logspace(log10(1), log10(epochs - start), n_ops - n_final).astype(int)

    For 110 ops, 6 final, 50 epochs and start 2: 19 drops at epoch 2, 11 at 3, 7 at 4, …,
    the last at epoch 48. The same function serves iteration-based searches (GPT).
    """
    for name, v in (("n_ops", n_ops), ("n_final", n_final), ("epochs", epochs), ("start", start)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise GrafsError(f"{name} must be an integer, got {v!r}")
    if n_final < 1 or n_ops < n_final:
        raise GrafsError(f"need 1 <= n_final <= n_ops, got n_ops={n_ops}, n_final={n_final}")
    if n_ops == n_final:
        return {}
    if not 1 <= start < epochs:
        raise GrafsError(f"shrinking must start inside the run: need 1 <= start < epochs, "
                         f"got start={start}, epochs={epochs}")
    points = start - 1 + np.logspace(np.log10(1), np.log10(epochs - start), n_ops - n_final,
                                     base=10).astype(int)
    epochs_, counts = np.unique(points, return_counts=True)
    return {int(e): int(c) for e, c in zip(epochs_, counts)}
