"""What autograd keeps for backward: the bytes a call saves (tests/test_cell_lean.py and
``python -m bench.cell`` measure the relaxed cell with it)."""
from __future__ import annotations

import torch


def saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of distinct storages autograd saves for backward during ``fn(x)``."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    del y
    return sum(seen.values())
