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
    pos: torch.Tensor                   # flat (row, column) positions of coefficient entries
    slot: torch.Tensor                  # the w slot of each entry
    tidx: torch.Tensor                  # index into the factor vector T (1, γ, σ(γ), 1−σ(γ))
    sign: torch.Tensor                  # constant factor of each entry


class LeanPlan:
    """How to evaluate the cell for one active set (see the module docstring)."""

    def __init__(self, space, active: tuple[tuple[str, ...], ...], slot_of, gamma_of,
                 n_gamma: int):
        from grafs.compiler.cell import _name_modules, substitute_holes
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
        for members in groups.values():
            ins = inputs[members[0].index]
            n_in = len(ins)
            leaves = [_ref(i) for i in range(n_in)]
            feat_col: dict[tuple, int] = {}
            features: list[tuple[Program, str | None]] = []
            entries: list[tuple[int, int, int, int, float]] = []   # row, col, slot, tidx, sign
            R = len(members)
            for r, h in enumerate(members):
                for op_name in active[h.index]:
                    spec = SEARCH_OPS[op_name]
                    k = slot_of[(h.index, op_name)]
                    gam = gamma_of[(h.index, op_name)]
                    if spec.linear is not None:
                        coefs, const = spec.linear
                        for c, f in enumerate(coefs):
                            if f != 0.0:
                                entries.append((r, c, k, *self._factor(f, gam)))
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
                        if has_module:
                            key = f"{h.name}_{op_name}"
                            term = _name_modules(term, key, leaves)
                        feat_col[fkey] = n_in + len(features)
                        features.append((lower(term, text=f"{h.name} {op_name}"), key))
                    entries.append((r, feat_col[fkey], k, 0, 1.0))
            C = n_in + len(features)
            # column C (one past the last) holds each row's constant term
            pos = [r * (C + 1) + (C if c == -1 else c) for r, c, *_ in entries]
            self.groups.append(_Group(
                [h.index for h in members], [lower(e) for e in ins], features, C,
                torch.tensor(pos, dtype=torch.long), torch.tensor([e[2] for e in entries]),
                torch.tensor([e[3] for e in entries]),
                torch.tensor([e[4] for e in entries], dtype=torch.float32)))
        self._dev_cache: dict = {}
        self.num_features = sum(len(g.features) for g in self.groups)

    def _factor(self, f, gam: list[int]) -> tuple[int, float]:
        """(index into T, constant factor) of one coefficient of a linear op."""
        if isinstance(f, (int, float)):
            return 0, float(f)
        kind, i = f
        base = {"g": 1, "sig": 1 + self.n_gamma, "1-sig": 1 + 2 * self.n_gamma}[kind]
        return base + gam[i], 1.0

    def _indices(self, g: _Group, device):
        key = (id(g), device)
        if key not in self._dev_cache:
            self._dev_cache[key] = (g.pos.to(device), g.slot.to(device), g.tidx.to(device),
                                    g.sign.to(device))
        return self._dev_cache[key]

    def run(self, x: torch.Tensor, w: torch.Tensor, gamma: torch.Tensor, modules=None) -> torch.Tensor:
        """The cell output for a flat fp32 ``x``, mixture weights ``w`` and γ."""
        sg = torch.sigmoid(gamma)
        T = torch.cat([gamma.new_ones(1), gamma, sg, 1.0 - sg])
        outs: list = [None] * self.n_holes
        for g in self.groups:
            ins = [run_program(p, x, {}, {"w": outs}) for p in g.inputs]
            # features read the group's inputs as w-refs; x stays the cell input (family
            # terms such as dyn(E) = E·(α−β) + β·x refer to it)
            cols = ins + [run_program(p, x, {}, {"w": ins, "g": gamma}, modules)
                          for p, _ in g.features]
            feats = torch.stack([c.expand_as(x) for c in cols])
            pos, slot, tidx, sign = self._indices(g, x.device)
            R, C = len(g.holes), g.n_cols
            vals = w.index_select(0, slot) * T.index_select(0, tidx) * sign
            coef = torch.zeros(R * (C + 1), dtype=x.dtype, device=x.device).index_add(0, pos, vals)
            coef = coef.view(R, C + 1)
            rows = torch.addmm(coef[:, C:], coef[:, :C], feats)
            for r, h in enumerate(g.holes):
                outs[h] = rows[r]
        return run_program(self.template, x, {}, {"w": outs})


class _LeanFunction(torch.autograd.Function):
    """Saves x, w and γ only; the backward re-runs the plan under autograd."""

    @staticmethod
    def forward(ctx, x, w, gamma, plan):
        ctx.plan = plan
        ctx.save_for_backward(x, w, gamma)
        return plan.run(x, w, gamma)

    @staticmethod
    def backward(ctx, grad):
        x, w, gamma = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        ins = [t.detach().requires_grad_(n) for t, n in zip((x, w, gamma), need)]
        with torch.enable_grad():
            y = ctx.plan.run(*ins)
            wanted = [t for t, n in zip(ins, need) if n]
            got = iter(torch.autograd.grad(y, wanted, grad, allow_unused=True) if wanted else ())
        out = []
        for t, n in zip(ins, need):
            gr = next(got) if n else None
            out.append(torch.zeros_like(t) if (n and gr is None) else gr)
        return out[0], out[1], out[2], None


def lean_apply(plan: LeanPlan, x: torch.Tensor, w: torch.Tensor, gamma: torch.Tensor,
               modules=None) -> torch.Tensor:
    """The cell on any-shaped ``x``: math in fp32 (autocast off), result in x's dtype."""
    dev_type = x.device.type
    with torch.autocast(dev_type, enabled=False) if torch.amp.is_autocast_available(dev_type) \
            else _null():
        flat = x.reshape(-1)
        xf = flat if flat.dtype == torch.float32 else flat.float()
        wf, gf = w.float(), gamma.float()
        if modules:
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
