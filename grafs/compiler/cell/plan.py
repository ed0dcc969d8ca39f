"""Kernel source for the relaxed GRAFS cell: one forward and one backward kernel for an active
set (or all slots), in any dialect of grafs.compiler.emit (Triton for GPUs, C for CPUs).

All active ops of all holes in one pass over ``x``; the mixture weights ``w``, the γ vector
``g`` and an active-op mask are tensors, so dropping an op (progressive shrinking) needs no new
kernel: an op whose slot is masked off costs one uniform scalar branch
(``if tl.load(mask_ptr + k) != 0``), and ops outside the plan's active set get no code at all.
Holes that read the same input (U0, U1 and U3 all read x) evaluate each γ-free op they share
once per element. The backward recomputes from ``x``, produces the gradients for ``x``, ``w``
and ``g`` (the latter two as per-program partial sums) and skips those reductions when the
``WG`` constexpr is false (weight steps: α and γ frozen).

An *unmasked* plan (the C kernels, whose builds take about a second) has no mask branches:
straight-line code for its active set, each op written on the hole's actual input expressions,
so the emitter's CSE shares values across ops and between the backward's recompute and the
partials. Instead every contribution of a slot (to its hole's output, to the input gradients,
to the partial sums) is ANDed with the slot's lane mask, so a build also serves every subset of
its active set, bit for bit as the build for exactly that subset (a dropped op adds +0, and its
inf or NaN never leaks): a search keeps using its build while the next one compiles. (NaN
apart: where NaN operands meet, which one propagates, its sign and payload, follows the
compiler's operand order, which can differ between builds; NaN stays NaN, and stops a search.)
"""
from __future__ import annotations

import functools

from grafs.compiler.lower import fold_constants
from grafs.compiler.reverse import LEAF, S, is_zero, reverse, rewrite_for_grad
from grafs.compiler.reverse import leaf as _leaf   # `leaf` names loop variables below
from grafs.compiler.emit import Dialect, Emitter
from grafs.compiler.triton.emit import HEAD, TRITON, module_source
from grafs.grammar import expr as E
from grafs.ops import SEARCH_OPS

__all__ = ["CellPlan", "cell_term", "cell_source"]


@functools.lru_cache(maxsize=None)
def cell_term(op_name: str, ell: float | None, dialect: Dialect = TRITON):
    """A search op on generic leaves: (term, input leaves, gamma leaves, partials, and the term
    in the form its partials are taken on, which the backward evaluates so they share nodes)."""
    spec = SEARCH_OPS[op_name]
    hin = [_leaf(f"in{a}") for a in range(1 if spec.kind == "unary" else 2)]
    gam = [_leaf(f"gam{i}") for i in range(len(spec.gammas))]
    term = fold_constants(E.as_expr(spec.build(hin, gam, ell)))
    dialect.check(term)
    gterm = rewrite_for_grad(term)
    parts = [dialect.partial_form(p) for p in reverse(gterm, hin + gam)]
    dialect.check(gterm, *parts)
    return term, hin, gam, parts, gterm


class CellPlan:
    """The cell template with holes replaced by leaves, each hole's inputs, slots and gammas."""

    def __init__(self, space, slot_of, gamma_of, clip: bool, active=None,
                 dialect: Dialect = TRITON, masked: bool = True):
        from grafs.compiler.cell.lower import substitute_holes
        self.d = dialect
        # masked: every op of the plan sits in an ``if`` on its mask entry (the kernels serve
        # every subset of ``active``); unmasked: straight-line code for ``active``, each slot's
        # contributions ANDed with its mask (serving every subset too)
        self.masked = masked
        # unmasked (C) plans take the adjoints from 1 and multiply by gy last (the gradient for
        # x, each partial sum), so a weight call's one-pass ∂y/∂x times gy is the backward's
        # ∂x to the bit: calls may take either path
        self.gy_last = not masked
        self._gy = _leaf("gy")
        self.ell = space.ell if clip else None
        self.holes = list(space.holes)
        self.hout = {h.index: _leaf(f"h{h.index}") for h in self.holes}
        inputs: dict[int, list[E.Expr]] = {}

        def fill(h, ins):
            inputs[h.index] = [fold_constants(i) for i in ins]
            return self.hout[h.index]

        self.T = fold_constants(substitute_holes(space, fill))
        self.inputs = inputs
        # ``active``: per hole, the ops the kernels contain (all by default); the rest of the
        # slots get no code at all, the contained ones are still selected by the mask at run time
        self.slots = {h.index: [(o, slot_of[(h.index, o)], list(gamma_of.get((h.index, o), [])))
                                for o in h.ops if active is None or o in active[h.index]]
                      for h in self.holes}
        self.K = len(slot_of)
        self.gcols: list[int] = []       # partial-sum column K + c holds d/d g[gcols[c]]
        self.gcol_of: dict[tuple[int, int], int] = {}
        for h in self.holes:
            for o, k, js in self.slots[h.index]:
                for i, j in enumerate(js):
                    self.gcol_of[(k, i)] = self.K + len(self.gcols)
                    self.gcols.append(j)
        # holes the output depends on (directly or through later holes' inputs)
        live = self._holes_read([self.T])
        self.live = [h for h in self.holes if h.index in live]
        for h in self.live:
            for o, _, _ in self.slots[h.index]:
                cell_term(o, self.ell, dialect)
        dialect.check(self.T, *[i for h in self.live for i in inputs[h.index]])

    @property
    def n_partials(self) -> int:
        """Columns of the backward's partial sums: one per w slot, then one per γ column (at
        least one, so a buffer of them is never empty)."""
        return max(self.K + len(self.gcols), 1)

    def _holes_read(self, roots) -> set[int]:
        """Indices of the holes whose outputs ``roots`` read, directly or through the inputs
        of the holes they read."""
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            for n in stack.pop().nodes():
                if n.op == LEAF and n.name.startswith("h"):
                    j = int(n.name[1:])
                    if j not in seen:
                        seen.add(j)
                        stack.extend(self.inputs[j])
        return seen

    def hole_refs(self, em: Emitter, h) -> list[str]:
        refs = []
        for e in self.inputs[h.index]:
            r = em.block(e)
            if not r.isidentifier():
                name = em.fresh("in")
                em.assign(name, r)
                r = name
            refs.append(r)
        return refs

    def groups(self) -> list[list]:
        """Live holes that read the same input expressions (U0, U1 and U3 of the GRAFS cell all
        read x), in order of their first member: a γ-free op they share is evaluated once per
        element, in forward and backward."""
        by_inputs: dict[tuple, list] = {}
        for h in self.live:
            by_inputs.setdefault(tuple(id(e) for e in self.inputs[h.index]), []).append(h)
        return list(by_inputs.values())

    def shared_ops(self, members) -> list[tuple[str, list]]:
        """(op, [(hole, slot, gamma indices), …]) over a group: γ-free ops once with all the
        members that hold them, ops with γ once per member."""
        def entry(o, h):
            return o if not SEARCH_OPS[o].gammas else (o, h.index)
        # in the order of the full space (not of the active ops): each hole then sums its ops
        # in the same order whatever was dropped, so a select build and the build for a subset
        # of its active set round alike
        rank: dict = {}
        for h in members:
            for o in h.ops:
                rank.setdefault(entry(o, h), len(rank))
        order: dict = {}
        for h in members:
            for o, k, js in self.slots[h.index]:
                order.setdefault(entry(o, h), (o, []))[1].append((h, k, js))
        return [order[e] for e in sorted(order, key=rank.__getitem__)]

    def _on(self, em: Emitter, ks, r: str) -> str:
        """``r`` where one of slots ``ks`` is active, else +0 (unmasked plans; a masked plan's
        branches already skip inactive slots)."""
        if self.masked:
            return r
        names = []
        for k in ks:
            em.assign_invariant(f"m{k}", self.d.lane_mask(k))
            names.append(f"m{k}")
        return self.d.on(names, r)

    def _any_active(self, uses) -> str:
        return self.d.any_active([k for _, k, _ in uses])

    def _w(self, k: int) -> str:
        return self.d.load("w_ptr", k)

    def _load_w(self, em: Emitter, k: int) -> None:
        if self.masked:
            em.assign(f"w{k}", self._w(k))
        else:
            em.assign_invariant(f"w{k}", self._w(k))

    def _open_slot(self, em: Emitter, cond: str, comment: str = "") -> None:
        """A block run only when its op slots are active; unmasked plans (compiled for exactly
        the active set) write straight-line code instead, so CSE reaches across ops."""
        if self.masked:
            em.open_if(cond, comment)
        elif comment:
            em.line(f"{self.d.comment} {comment}")

    def _close_slot(self, em: Emitter) -> None:
        if self.masked:
            em.close()

    def emit_group_forward(self, em: Emitter, members, refs: list[str],
                           grad_form: bool = False) -> None:
        """The group's hole outputs; ``grad_form``: each op in the form its partials are taken
        on (the backward's recompute, so an unmasked backward reuses its nodes)."""
        for h in members:
            em.assign(f"h{h.index}", self.d.zeros(), f"hole {h.name}")
        for o, uses in self.shared_ops(members):
            if len(uses) == 1:
                h, k, js = uses[0]
                self._open_slot(em, self.d.is_active(k), f"{h.name}: {o}")
                self._load_w(em, k)
                term, _ = self._slot_exprs(em, o, h, k, js, refs, grad_form)
                r, _ = em.ref(term)
                em.assign(f"h{h.index}", f"h{h.index} + {self._on(em, [k], f'w{k} * {r}')}")
                self._close_slot(em)
                continue
            self._open_slot(em, self._any_active(uses), f"{'/'.join(u[0].name for u in uses)}: {o}, once")
            term, _ = self._slot_exprs(em, o, uses[0][0], None, [], refs, grad_form)
            r, _ = em.ref(term)
            for h, k, _ in uses:
                self._open_slot(em, self.d.is_active(k))
                em.assign(f"h{h.index}", f"h{h.index} + {self._on(em, [k], f'{self._w(k)} * {r}')}")
                self._close_slot(em)
            self._close_slot(em)
        for h in members:
            em.bind(self.hout[h.index], f"h{h.index}")

    def _times_gy(self, e: E.Expr) -> E.Expr:
        """A partial-sum term of the backward: gy · e where the adjoints start from 1."""
        return S("mul", self._gy, e) if self.gy_last else e

    def _emit_slot_backward(self, em, o, use, refs, ai) -> None:
        h, k, js = use
        j = h.index
        self._open_slot(em, self.d.is_active(k), f"{h.name}: {o}")
        self._load_w(em, k)
        term, parts = self._slot_exprs(em, o, h, k, js, refs, True)
        n_in = len(refs)

        def w_partial():
            em.open_if("WG", "partial sums for the w/γ gradients (not in weight steps)")
            em.line(self.d.store_partial(k, self._on(em, [k], em.block(self._times_gy(S("mul", _leaf(f"ah{j}"), term))))))
            em.close()
        if self.masked:
            w_partial()
        AW = _leaf(f"aw{k}")
        em.assign(f"aw{k}", f"ah{j} * w{k}")
        em.bind(AW, f"aw{k}")
        for a, p in enumerate(parts[:n_in]):
            if not is_zero(p):
                em.assign(ai[a], f"{ai[a]} + {self._on(em, [k], em.block(S('mul', AW, p)))}")
        if not self.masked:   # after the partials, so its scope reuses their values (CSE)
            w_partial()
        for i, p in enumerate(parts[n_in:]):
            if not is_zero(p):
                em.open_if("WG")
                r = self._on(em, [k], em.block(self._times_gy(S("mul", AW, p))))
                em.line(self.d.store_partial(self.gcol_of[(k, i)], r) + f"  {self.d.comment} d/dg[{js[i]}]")
                em.close()
        self._close_slot(em)

    def _slot_exprs(self, em, o, h, k, js, refs, grad_form: bool):
        """Op ``o`` at hole ``h`` (slot ``k``, γ indices ``js``): its term (as written, or in
        the form its partials are taken on) and partials, ready to emit. Masked plans bind the
        op's generic leaves to the hole's input names in the slot's scope; unmasked plans
        substitute the hole's input expressions and per-slot γ leaves, so equal
        sub-expressions of different ops are the same (interned) node and computed once."""
        term, hin, gam, parts, gterm = cell_term(o, self.ell, self.d)
        if grad_form:
            term = gterm
        if self.masked:
            for leaf, r in zip(hin, refs):
                em.bind(leaf, r)
            for i, (leaf, j) in enumerate(zip(gam, js)):
                em.assign(f"g{k}_{i}", self.d.load("g_ptr", j))
                em.bind(leaf, f"g{k}_{i}", False)
            return term, parts
        mapping = dict(zip(map(id, hin), self.inputs[h.index]))
        for i, (leaf, j) in enumerate(zip(gam, js)):
            g = _leaf(f"g{k}_{i}")
            if em._get(g) is None:
                em.assign_invariant(g.name, self.d.load("g_ptr", j))
                em.bind(g, g.name, False)
            mapping[id(leaf)] = g
        memo: dict[int, E.Expr] = {}   # shared by the term and its partials
        return (E.substitute(term, mapping, memo),
                [E.substitute(p, mapping, memo) for p in parts])

    def forward_statements(self, indent: str = "    ") -> tuple[list[str], str]:
        """The forward's statements (reading ``x``) and the name of the output block; an
        unmasked plan's loop-invariant statements are in ``self.prologue_fwd``."""
        em = Emitter(self.d, indent, hoist=not self.masked)
        self.prologue_fwd = em.prologue
        em.bind(E.var(), "x")
        for members in self.groups():
            self.emit_group_forward(em, members, self.hole_refs(em, members[0]))
        y = em.block(self.T)
        return em.lines, y

    def forward_body(self) -> str:
        lines, y = self.forward_statements()
        return ("@triton.jit\n"
                "def grafs_cell_fwd(x_ptr, w_ptr, g_ptr, mask_ptr, y_ptr, n, BLOCK: tl.constexpr):\n"
                + HEAD + "\n".join(lines) + "\n"
                + f"    tl.store(y_ptr + offs, {y}.to(y_ptr.dtype.element_ty), mask=m)\n")

    def backward_statements(self, indent: str = "    ") -> tuple[list[str], str]:
        """The backward's statements (reading ``x`` and ``gy``, writing partial sums under
        ``WG``) and the name of the block holding the gradient for ``x``; an unmasked plan's
        loop-invariant statements are in ``self.prologue_bwd``."""
        lines, ax, _ = self._backward(indent, with_output=False)
        return lines, (f"gy * {ax}" if self.gy_last else ax)

    def forward_dx_statements(self, indent: str = "    ") -> tuple[list[str], str, str]:
        """A weight call's forward in one pass (unmasked plans): the statements (reading
        ``x``; ``WG`` false), the block of the output (the forward's value: the same hole sums
        in the same order) and the block of ∂y/∂x, the backward's before its multiplication by
        ``gy`` (so ``gy`` times it is the backward's ∂x to the bit). Loop invariants in
        ``self.prologue_bwd``."""
        assert self.gy_last, "a one-pass weight call needs an unmasked plan"
        lines, ax, y = self._backward(indent, with_output=True)
        return lines, y, ax

    def _backward(self, indent: str, with_output: bool) -> tuple[list[str], str, str | None]:
        X, GY = E.var(), self._gy
        live_ids = [h.index for h in self.live]
        houts = [self.hout[j] for j in live_ids]
        dT = reverse(rewrite_for_grad(self.T), [X] + houts)
        dI = {j: [reverse(rewrite_for_grad(e), [X] + houts) for e in self.inputs[j]]
              for j in live_ids}
        # hole outputs the backward reads: inputs of live holes and the partials above
        used = self._holes_read(list(dT) + [e for j in live_ids for ds in dI[j] for e in ds]
                                + [e for j in live_ids for e in self.inputs[j]])
        if with_output:     # the output reads every live hole
            used |= set(live_ids)
        em = Emitter(self.d, indent, hoist=not self.masked)
        self.prologue_bwd = em.prologue
        em.bind(X, "x")
        em.bind(GY, "gy")
        refs: dict[int, list[str]] = {}
        groups = self.groups()
        for members in groups:        # recompute what the backward needs, in order
            r = self.hole_refs(em, members[0])
            for h in members:
                refs[h.index] = r
            if any(h.index in used for h in members):
                self.emit_group_forward(em, members, r, grad_form=not self.masked)
        y = em.block(self.T) if with_output else None
        em.line(f"{self.d.comment} backward")
        seed = E.const(1.0) if self.gy_last else GY
        for j, d in zip(live_ids, dT[1:]):
            em.assign(f"ah{j}", em.block(S('mul', seed, d)))
        em.assign("ax", em.block(S('mul', seed, dT[0])))
        # a group is processed where its first member falls in reverse order: every hole that
        # reads any member comes later in evaluation order, so all members' adjoints are final
        for members in reversed(groups):
            j = members[0].index
            for h in members:
                em.bind(_leaf(f"ah{h.index}"), f"ah{h.index}")
            n_in = len(self.inputs[j])
            ai = [f"ai{j}_{a}" for a in range(n_in)]
            for name in ai:
                em.assign(name, self.d.zeros())
            for o, uses in self.shared_ops(members):
                if len(uses) == 1:
                    self._emit_slot_backward(em, o, uses[0], refs[j], ai)
                    continue
                # the op once for all members that hold it: Σ_members ah·w times its partials
                self._open_slot(em, self._any_active(uses), f"{'/'.join(u[0].name for u in uses)}: {o}, once")
                term, parts = self._slot_exprs(em, o, uses[0][0], None, [], refs[j], True)
                rt = em.block(term)
                aws = em.fresh("aws")
                em.assign(aws, self.d.zeros())
                for h, k, _ in uses:
                    self._open_slot(em, self.d.is_active(k), h.name)
                    em.assign(aws, f"{aws} + {self._on(em, [k], f'ah{h.index} * {self._w(k)}')}")
                    em.open_if("WG")
                    r = f"ah{h.index} * {rt}"
                    em.line(self.d.store_partial(k, self._on(em, [k], f"gy * ({r})" if self.gy_last else r)))
                    em.close()
                    self._close_slot(em)
                AW = _leaf(aws)
                em.bind(AW, aws)
                ks = [k for _, k, _ in uses]
                for a, p in enumerate(parts[:n_in]):
                    if not is_zero(p):
                        em.assign(ai[a], f"{ai[a]} + {self._on(em, ks, em.block(S('mul', AW, p)))}")
                self._close_slot(em)
            for a in range(n_in):   # through the group's (shared) input expression
                AI = _leaf(ai[a])
                em.bind(AI, ai[a])
                for leaf, d in zip([X] + houts, dI[j][a]):
                    if is_zero(d):
                        continue
                    target = "ax" if leaf is X else f"a{leaf.name}"
                    em.assign(target, f"{target} + {em.block(S('mul', AI, d))}")
        return em.lines, "ax", y

    def backward_body(self) -> str:
        lines, ax = self.backward_statements()
        return ("@triton.jit\n"
                "def grafs_cell_bwd(x_ptr, w_ptr, g_ptr, mask_ptr, gy_ptr, gx_ptr, part_ptr, n,\n"
                "                   NC: tl.constexpr, WG: tl.constexpr, BLOCK: tl.constexpr):\n"
                + HEAD + "    gy = tl.load(gy_ptr + offs, mask=m, other=0.0).to(tl.float32)\n"
                + "\n".join(lines) + "\n"
                + f"    tl.store(gx_ptr + offs, {ax}.to(gx_ptr.dtype.element_ty), mask=m)\n")


def cell_source(space, slot_of, gamma_of, clip: bool, interp: bool = False) -> str:
    """Generated Triton source of the relaxed cell (forward and backward, all slots)."""
    plan = CellPlan(space, slot_of, gamma_of, clip)
    text = f"relaxed {space.template} with {plan.K} slots, clip={clip}"
    return module_source("relaxed cell", text, plan.forward_body() + "\n\n" + plan.backward_body(), interp)
