"""Which compiled code serves a relaxed-cell call: the Inductor-fused, Triton and C kernels per
active set, kept apart from :class:`grafs.runtime.cell.RelaxedCell`'s sampling and shrinking.

The fused and Triton modes keep the code they have after a drop (dropped ops get weight 0 or a
masked-out branch) until the active count falls to ``recompile_ratio`` of the compiled count
(:meth:`CompiledCellCode._code_key`). The C mode compiles exactly the new active set after every
drop, in a background thread, and calls its current build, which masks the dropped ops bit for
bit as the new build computes, until the new one is loaded (:meth:`CompiledCellCode._c_cell_for`).
"""
from __future__ import annotations

from grafs.compiler.cell.lower import CellKernels
from grafs.errors import GrafsError


def _contains(outer, inner) -> bool:
    """Active set ``inner`` is a subset of ``outer`` (None: all ops)."""
    return outer is None or all(set(a) <= set(b) for a, b in zip(inner, outer))


class CompiledCellCode:
    """Mixin of RelaxedCell: the kernels per active set and the choice of the one to call. Its
    caches (``_kernels``, ``_compiled_key``, ``_generated``, ``_generated_key``,
    ``_generated_last``, ``_c_pending``) are set by ``RelaxedCell._reset_caches``."""
    recompile_ratio = 0.6
    # the C cell: after a drop, compile the new active set's code in a background thread and
    # keep calling the current build (masked) until it is ready; False: compile in the call
    c_build_in_background = True

    def _code_key(self, key, current):
        """The active set to generate code for: the ``current`` one while it still contains
        ``key`` and is not much larger (dropped ops then cost a masked-out branch or a zero
        weight), else exactly ``key``."""
        n_now = sum(len(k) for k in key)
        if current is not None and _contains(current, key):
            n_cur = sum(len(k) for k in current)
            if n_now > self.recompile_ratio * n_cur and n_now != self.num_holes:
                return current
        return key

    def _kernels_for(self, key) -> CellKernels:
        key = self._compiled_key = self._code_key(key, self._compiled_key)
        if key not in self._kernels:
            self._kernels[key] = CellKernels(self._program(key, self.clip))
        return self._kernels[key]

    def _generated_for(self, kind: str, key):
        """The Triton or C cell (``kind``) for active set ``key``."""
        last = self._generated_last[kind]
        if last is not None and last[0] is key and (kind != "c" or self._c_pending is None
                                                    or not self._c_pending.ready()):
            return last[1]      # the per-call path: the active set is cached
        if kind == "c":
            return self._c_cell_for(key, last[1] if last is not None else None)
        asked, key = key, self._code_key(key, self._generated_key[kind])
        self._generated_key[kind] = key
        if (kind, key) not in self._generated:
            from grafs.compiler.triton.backend import TritonCell
            self._generated[(kind, key)] = TritonCell(self.space, self.slot_of, self.gamma_of,
                                                      self.clip, active=key)
        self._generated_last[kind] = (asked, self._generated[(kind, key)])
        return self._generated[(kind, key)]

    def _new_c_cell(self, key):
        from grafs.compiler.cell.c_build import unavailable_reason
        from grafs.compiler.cell.c_kernels import CCell
        if unavailable_reason():
            raise GrafsError(f"cell mode 'c' cannot run here: {unavailable_reason()}; "
                             f"use mode 'auto' (the lean path on this machine)")
        cell = self._generated[("c", key)] = CCell(self.space, self.slot_of, self.gamma_of,
                                                   self.clip, active=key)
        return cell

    def prebuild(self, device) -> bool:
        """Start compiling the C code of the current active set in the background thread now,
        where calls on ``device`` will run the C cell, so that the first call, which would
        otherwise compile it (about a second at 110 ops on a small CPU, the only build a search
        waits for), finds it built or under way. The build is the one that call would make;
        results do not depend on when it finishes. Returns whether a build was started."""
        from grafs.compiler.cell.c_build import unavailable_reason
        if not self.c_build_in_background or self.mode_for(device) != "c" \
                or unavailable_reason() is not None:
            return False
        key = self.active_ops()
        if ("c", key) in self._generated or self._c_pending is not None:
            return False
        self._c_pending = self._new_c_cell(key)
        self._c_pending.start_build(side_by_side=True)      # the build the search waits for
        return True

    def finish_builds(self) -> None:
        """Wait for this cell's background C build, if one is pending (a bench's steady state;
        results do not depend on when it finishes)."""
        if self._c_pending is not None:
            self._c_pending.build()

    def _c_cell_for(self, key, current):
        """The C cell to call for active set ``key``. After a drop, the build for exactly
        ``key`` compiles in the background (one build at a time: a drop during a build waits
        for it, then the newest active set is built) while ``current``, whose active set
        contains ``key``, serves: its mask drops the ops, bit for bit as the new build."""
        cell = self._generated.get(("c", key))
        if cell is not None and cell.ready():
            if cell is self._c_pending:
                self._c_pending = None
            self._generated_last["c"] = (key, cell)
            return cell
        if not self.c_build_in_background or current is None \
                or not _contains(current.active, key):
            cell = (cell or self._new_c_cell(key)).build()      # compile in this call
            self._generated_last["c"] = (key, cell)
            return cell
        pending = self._c_pending
        if pending is not None and pending.ready():
            self._c_pending = None
            if _contains(pending.active, key):   # a build for an earlier (larger) active set
                current = pending
        if self._c_pending is None:
            self._c_pending = cell or self._new_c_cell(key)
            self._c_pending.start_build()
        # cached until the pending build is ready (the per-call path checks)
        self._generated_last["c"] = (key, current)
        return current
