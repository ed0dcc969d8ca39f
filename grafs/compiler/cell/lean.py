"""The relaxed cell's lean eager path: each distinct op evaluated once, one matmul per group.

A hole computes ``Σ_k w_k·op_k(inputs)``. Written op by op (the reference interpreter) that is
four or five ATen ops per candidate and an autograd node for each, and U0, U1 and U3 evaluate
the same 23 functions of x three times. Here, for one active set, a :class:`LeanPlan`:

* groups holes that read the same input expressions (U0, U1, U3 all read x);
* evaluates each distinct non-affine op of a group once on those inputs ("features");
* folds the affine ops (x, −x, x+γ, γ·x, γ, a+b, a−b, mix, left, right; ``SearchOp.linear``)
  into the mixing coefficients instead of evaluating them;
* mixes a whole group with one ``addmm``: rows (holes) = C @ [inputs; features] + bias, where C
  and bias are gathered from w and γ by a fixed index pattern (a few kernels whatever the size).

So the number of kernels per call falls with the active ops, and nothing per call depends on
Python-side data that changes only at ``drop``. :func:`lean_apply` runs the plan inside an
autograd Function that saves only x, w and γ and recomputes in backward (a cell call saves
one input-sized tensor, not one per op); cells with trainable-family ops (modules that keep
running statistics) run the plan under plain autograd instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from grafs.compiler.eager import run_program
from grafs.compiler.lower import Program, lower
from grafs.grammar import expr as E
from grafs.ops import OPS, SEARCH_OPS


def _ref(i: int) -> E.Expr:
    return E.Expr("wref", value=i)


@dataclass
class _Group:
    holes: list[int]                    # hole indices = rows of the group's output
    inputs: list[Program]               # the shared input expressions, over x and hole outputs
    features: list[tuple[Program, str | None]]   # (program over the inputs, module key or None)
    n_cols: int                         # inputs + features
    offset: int                         # where the group's (R, C+1) coefficients start
    used: list[tuple[int, int]]         # (row, column) pairs with a coefficient; column C = bias
    matmul: bool                        # mix with one addmm (many terms) or a few mul/adds


# groups with more coefficient entries than this mix with one addmm over stacked columns;
# smaller ones (late in a search) with a mul and an add per entry, which is fewer kernels
MATMUL_FROM = 6


class LeanPlan:
    """How to evaluate the cell for one active set (see the module docstring)."""

    def __init__(self, space, active: tuple[tuple[str, ...], ...], slot_of, gamma_of,
                 n_gamma: int):
        from grafs.compiler.cell.lower import substitute_holes
        ell = space.ell if space.clip else None
        self.n_gamma = n_gamma
        inputs: dict[int, list[E.Expr]] = {}

        def fill(h, ins):
            inputs[h.index] = list(ins)
            return _ref(h.index)

        # the template over hole outputs: vectors["w"][i] is hole i's output here
        self.template = lower(substitute_holes(space, fill), text=f"template {space.template}")
        self.n_holes = len(space.holes)
        groups: dict[tuple, list] = {}
        for h in space.holes:
            groups.setdefault(tuple(id(e) for e in inputs[h.index]), []).append(h)
        self.groups: list[_Group] = []
        pos_all: list[int] = []
        entries_all: list[tuple] = []
        offset = 0
        for members in groups.values():
            ins = inputs[members[0].index]
            n_in, R = len(ins), len(members)
            features, entries = self._group_terms(members, n_in, active, slot_of, gamma_of, ell)
            C = n_in + len(features)
            # column C (one past the last) holds each row's constant term
            flat = [r * (C + 1) + (C if c == -1 else c) for r, c, *_ in entries]
            used = sorted({(f // (C + 1), f % (C + 1)) for f in flat})
            pos_all += [offset + f for f in flat]
            entries_all += entries
            self.groups.append(_Group([h.index for h in members], [lower(e) for e in ins], features,
                                      C, offset, used, len(used) > MATMUL_FROM))
            offset += R * (C + 1)
        self.n_coef = offset
        self.pos = torch.tensor(pos_all, dtype=torch.long)
        self.slot = torch.tensor([e[2] for e in entries_all], dtype=torch.long)
        # the γ entries the active ops read: only these enter the coefficient table (a dropped
        # op's γ then gets an exact 0 gradient, even where it is not finite)
        used = sorted({t[1] for *_, t, _ in entries_all if t[0] != "1"})
        at = {j: i for i, j in enumerate(used)}
        base = {"g": 1, "sig": 1 + len(used), "1-sig": 1 + 2 * len(used)}
        self.gidx = torch.tensor(used, dtype=torch.long)
        self.tidx = torch.tensor([0 if t[0] == "1" else base[t[0]] + at[t[1]]
                                  for *_, t, _ in entries_all], dtype=torch.long)
        self.sign = torch.tensor([e[4] for e in entries_all], dtype=torch.float32)
        self._dev_cache: dict = {}
        self.num_features = sum(len(g.features) for g in self.groups)

    def _group_terms(self, members, n_in, active, slot_of, gamma_of, ell):
        """The group's features (distinct non-affine ops on its inputs) and its coefficient
        entries (row, column, w slot, factor (kind, γ index), sign); column -1 is a row's
        constant."""
        from grafs.compiler.cell.lower import name_modules
        leaves = [_ref(i) for i in range(n_in)]
        feat_col: dict[tuple, int] = {}
        features: list[tuple[Program, str | None]] = []
        entries: list[tuple[int, int, int, tuple[str, int], float]] = []
        for r, h in enumerate(members):
            for op_name in active[h.index]:
                spec = SEARCH_OPS[op_name]
                k = slot_of[(h.index, op_name)]
                gam = gamma_of[(h.index, op_name)]
                if spec.linear is not None:   # folded into the coefficients, never evaluated
                    coefs, const = spec.linear
                    entries += [(r, c, k, *self._factor(f, gam)) for c, f in enumerate(coefs)
                                if f != 0.0]
                    if const != 0.0:
                        entries.append((r, -1, k, *self._factor(const, gam)))
                    continue
                term = E.as_expr(spec.build(leaves, [E.Expr("gref", value=j) for j in gam], ell))
                has_module = any(n.op in OPS and OPS[n.op].module is not None
                                 for n in E.topological(term))
                # γ-free, module-free ops are shared by every hole of the group
                fkey = (op_name,) if not (gam or has_module) else (op_name, h.index)
                if fkey not in feat_col:
                    key = None
                    if has_module:   # the module keys of the reference cell (RelaxedCell.terms)
                        key = f"{h.name}_{op_name}"
                        term = name_modules(term, key, leaves)
                    feat_col[fkey] = n_in + len(features)
                    features.append((lower(term, text=f"{h.name} {op_name}"), key))
                entries.append((r, feat_col[fkey], k, ("1", -1), 1.0))
        return features, entries

    @staticmethod
    def _factor(f, gam: list[int]) -> tuple[tuple[str, int], float]:
        """((kind, γ index), constant factor) of one coefficient of a linear op; kind "1" for a
        constant, else "g", "sig" or "1-sig" of that γ."""
        if isinstance(f, (int, float)):
            return ("1", -1), float(f)
        kind, i = f
        return (kind, gam[i]), 1.0

    def _indices(self, device):
        idx = self._dev_cache.get(device)
        if idx is None:
            idx = self._dev_cache[device] = tuple(t.to(device) for t in
                                                  (self.pos, self.slot, self.tidx, self.sign,
                                                   self.gidx))
        return idx

    def coefficients(self, w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """Every group's mixing coefficients, flat: w·(1, γ, σ(γ) or 1−σ(γ))·sign, summed per
        (row, column): six small kernels for the whole cell."""
        pos, slot, tidx, sign, gidx = self._indices(w.device)
        gu = gamma.index_select(0, gidx)
        sg = torch.sigmoid(gu)
        T = torch.cat([gamma.new_ones(1), gu, sg, 1.0 - sg])
        vals = w.index_select(0, slot) * T.index_select(0, tidx) * sign
        return torch.zeros(self.n_coef, dtype=w.dtype, device=w.device).index_add(0, pos, vals)

    def run(self, x: torch.Tensor, w: torch.Tensor, gamma: torch.Tensor, modules=None) -> torch.Tensor:
        """The cell output for a flat fp32 ``x``, mixture weights ``w`` and γ."""
        coef_all = self.coefficients(w, gamma)
        outs: list = [None] * self.n_holes
        for g in self.groups:
            ins = [run_program(p, x, {}, {"w": outs}) for p in g.inputs]
            # features read the group's inputs as w-refs; x stays the cell input (family
            # terms such as dyn(E) = E·(α−β) + β·x refer to it)
            cols = ins + [run_program(p, x, {}, {"w": ins, "g": gamma}, modules)
                          for p, _ in g.features]
            R, C = len(g.holes), g.n_cols
            coef = coef_all[g.offset:g.offset + R * (C + 1)].view(R, C + 1)
            if g.matmul:
                feats = torch.stack([c if c.shape == x.shape else c.expand_as(x) for c in cols])
                rows = torch.addmm(coef[:, C:], coef[:, :C], feats)
                for r, h in enumerate(g.holes):
                    outs[h] = rows[r]
                continue
            acc: list = [None] * R
            for r, c in g.used:
                t = coef[r, c] if c == C else coef[r, c] * cols[c]
                acc[r] = t if acc[r] is None else acc[r] + t
            for r, h in enumerate(g.holes):
                outs[h] = acc[r] if acc[r].shape == x.shape else acc[r].expand_as(x)
        return run_program(self.template, x, {}, {"w": outs})


# The cell is elementwise, so it runs in chunks of CHUNK elements: each chunk's temporaries
# (one row per feature) stay in cache and below the allocator's mmap threshold, where a single
# pass over a large activation would page-fault fresh memory for every temporary.
CHUNK = 1 << 16
# Below this many elements autograd keeps the intermediates (a few MB at most): recomputing in
# backward would double the per-call dispatch cost that dominates small activations.
RECOMPUTE_FROM = 1 << 18


def _chunks(n: int):
    return [(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


class _LeanFunction(torch.autograd.Function):
    """Saves x, w and γ only; the backward re-runs the plan under autograd, chunk by chunk."""

    @staticmethod
    def forward(ctx, x, w, gamma, plan):
        ctx.plan = plan
        ctx.save_for_backward(x, w, gamma)
        n = x.numel()
        if n <= CHUNK or x.device.type != "cpu":   # chunks are for CPU caches
            return plan.run(x, w, gamma)
        out = torch.empty_like(x)
        for a, b in _chunks(n):
            out[a:b] = plan.run(x[a:b], w, gamma)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w, gamma = ctx.saved_tensors
        nx, nw, ng = ctx.needs_input_grad[:3]
        wd = w.detach().requires_grad_(nw)
        gd = gamma.detach().requires_grad_(ng)
        gx = torch.empty_like(x) if nx else None
        gw = torch.zeros_like(w) if nw else None
        gg = torch.zeros_like(gamma) if ng else None
        for a, b in (_chunks(x.numel()) if x.device.type == "cpu" else [(0, x.numel())]):
            xc = x[a:b].detach().requires_grad_(nx)
            with torch.enable_grad():
                y = ctx.plan.run(xc, wd, gd)
                leaves = [t for t, n in ((xc, nx), (wd, nw), (gd, ng)) if n]
                got = list(torch.autograd.grad(y, leaves, grad[a:b], allow_unused=True))
            for t, n in ((xc, nx), (wd, nw), (gd, ng)):
                if not n:
                    continue
                gr = got.pop(0)
                if gr is None:
                    continue
                if t is xc:
                    gx[a:b] = gr
                elif t is wd:
                    gw += gr
                else:
                    gg += gr
        if nx and gx is None:
            gx = torch.zeros_like(x)
        return gx, gw, gg, None


def lean_apply(plan: LeanPlan, x: torch.Tensor, w: torch.Tensor, gamma: torch.Tensor,
               modules=None) -> torch.Tensor:
    """The cell on any-shaped ``x``: math in fp32 (autocast off), result in x's dtype."""
    dev_type = x.device.type
    with torch.autocast(dev_type, enabled=False) if torch.amp.is_autocast_available(dev_type) \
            else _null():
        flat = x.reshape(-1)
        xf = flat if flat.dtype == torch.float32 else flat.float()
        wf, gf = w.float(), gamma.float()
        if modules or xf.numel() < RECOMPUTE_FROM:
            y = plan.run(xf, wf, gf, modules)
        elif torch.is_grad_enabled() and (xf.requires_grad or wf.requires_grad or gf.requires_grad):
            y = _LeanFunction.apply(xf, wf, gf, plan)
        else:
            y = plan.run(xf, wf, gf)
    return y.to(x.dtype).view(x.shape)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
