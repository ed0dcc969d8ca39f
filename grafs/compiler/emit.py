"""Straight-line kernel statements from Expr DAGs, for any target language (a :class:`Dialect`).

The generated kernels (Triton for GPUs, C with SIMD vectors for CPUs) have the same shape: each
program handles a block of elements, every value is a block (or a scalar the target broadcasts),
and the code is a list of assignments inside uniform ``if`` blocks. :class:`Emitter` writes
those statements once per node and scope (CSE); a :class:`Dialect` says how a statement, a
literal, an op template, a load or a reduction is spelled. The Triton dialect lives in
grafs.compiler.triton.emit, the C one in grafs.compiler.cell.c_emit; the relaxed cell's kernels are
written against this interface by grafs.compiler.cell.plan.
"""
from __future__ import annotations

from grafs.compiler.reverse import LEAF
from grafs.errors import CompileError
from grafs.grammar import expr as E
from grafs.ops import OPS

__all__ = ["Dialect", "Emitter"]


class Dialect:
    """How one target language spells kernel statements. Subclasses set ``name``, ``field``
    (the :class:`grafs.ops.Op` attribute holding the templates of ops registered from outside),
    ``spellings`` (the base ops' templates), ``internal`` (templates of the reverse mode's
    internal ops) and override the spelling methods."""
    name = ""
    field = ""
    spellings: dict[str, str] = {}
    comment = "#"
    internal: dict[str, str] = {}

    def lit(self, v: float) -> str:
        r = repr(float(v))
        return f"({r})" if r.startswith("-") else r

    def template(self, op: str) -> str:
        if op in self.internal:
            return self.internal[op]
        spec = OPS.get(op)
        t = self.spellings.get(op) or (getattr(spec, self.field, None) if spec is not None else None)
        if not t:
            raise CompileError(f"op {op!r} has no {self.name} template (grafs.ops.Op.{self.field}), "
                               f"so the {self.name} backend cannot compile formulas using it; use "
                               f"backend='inductor' or 'eager', or register the op with a "
                               f"{self.field}=... template")
        return t

    def fill(self, n: E.Expr, refs: list[str]) -> str:
        if n.op == "pow" and n.args[1].is_const:
            v, r = n.args[1].value, refs[0]
            if v == 2.0:
                return f"({r} * {r})"
            if v == 3.0:
                return f"({r} * {r} * {r})"
            if v == 0.5:
                return self.sqrt(r)
            if v == -1.0:
                return f"({self.lit(1.0)} / {r})"
        return self.template(n.op).format(*refs)

    def check(self, *roots: E.Expr) -> None:
        """Raise the CompileError naming the first op without a template."""
        for r in roots:
            for n in E.topological(r):
                if n.args:
                    self.template(n.op)

    def expand(self, n: E.Expr) -> E.Expr | None:
        """An equivalent Expr for node ``n`` built from other nodes, or None to use its
        template: lets CSE share e.g. σ(x) between silu(x), sigmoid(x) and their partials."""
        return None

    def partial_form(self, e: E.Expr) -> E.Expr:
        """How a partial derivative is written for this target (default: as derived)."""
        return e

    # -- spellings (overridden) -----------------------------------------------------------
    def sqrt(self, r: str) -> str:
        raise NotImplementedError

    def full(self, lit: str) -> str:
        """A block holding the literal."""
        raise NotImplementedError

    def computed_const(self, lit: str) -> str:
        """A literal the target computes with (constants that did not fold, e.g. 1/0)."""
        return lit

    def to_block(self, ref: str) -> str:
        """A scalar value as a block."""
        raise NotImplementedError

    def zeros(self) -> str:
        return self.full(self.lit(0.0))

    def assign(self, name: str, expr: str, declare: bool) -> str:
        raise NotImplementedError

    def if_open(self, cond: str) -> str:
        raise NotImplementedError

    def if_close(self) -> str | None:
        return None

    def load(self, ptr: str, index) -> str:
        """One fp32 parameter from a small vector."""
        raise NotImplementedError

    def is_active(self, k: int) -> str:
        """The condition that op slot ``k`` is active (the mask vector)."""
        raise NotImplementedError

    def any_active(self, ks) -> str:
        raise NotImplementedError

    def lane_mask(self, k: int) -> str:
        """A block of all-ones bits where slot ``k`` is active, else zeros (unmasked plans)."""
        raise NotImplementedError

    def on(self, masks: list[str], r: str) -> str:
        """``r`` where any of the lane masks ``masks`` is set, else +0 (unmasked plans)."""
        raise NotImplementedError

    def store_partial(self, col: int, r: str) -> str:
        """The statement adding the (valid lanes of the) block ``r`` to partial sum ``col``."""
        raise NotImplementedError


class Emitter:
    """Straight-line statements from Expr DAGs, each node once per scope (CSE)."""

    def __init__(self, dialect: Dialect, indent: str = "    ", hoist: bool = False):
        self.d = dialect
        self.lines: list[str] = []
        # hoist: values that do not depend on the element (γ, w and what is computed from them
        # alone) go to ``prologue``, computed once per call before the element loop
        self.prologue: list[str] | None = [] if hoist else None
        self.ind = indent
        self.scopes: list[dict[int, tuple[E.Expr, str, bool]]] = [{}]
        self.declared: list[set[str]] = [set()]
        self.count = 0

    def line(self, s: str) -> None:
        self.lines.append(self.ind + s)

    def assign(self, name: str, expr: str, comment: str = "") -> None:
        """``name = expr``; declared at its first assignment where the dialect needs that."""
        declare = not any(name in s for s in self.declared)
        if declare:
            self.declared[-1].add(name)
        self.line(self.d.assign(name, expr, declare) + self._note(comment))

    def assign_invariant(self, name: str, expr: str) -> None:
        """``name = expr`` for a value the same for every element: into the prologue (once)
        when hoisting, else where the code is."""
        if self.prologue is None:
            self.assign(name, expr)
        elif name not in self.declared[0]:
            self.declared[0].add(name)
            self.prologue.append(self.d.assign(name, expr, True))

    def _note(self, comment: str) -> str:
        return f"  {self.d.comment} {comment}" if comment else ""

    def open_if(self, cond: str, comment: str = "") -> None:
        self.line(self.d.if_open(cond) + self._note(comment))
        self.ind += "    "
        self.scopes.append({})
        self.declared.append(set())

    def close(self) -> None:
        self.ind = self.ind[:-4]
        self.scopes.pop()
        self.declared.pop()
        end = self.d.if_close()
        if end:
            self.line(end)

    def bind(self, e: E.Expr, name: str, block: bool = True) -> None:
        self.scopes[-1][id(e)] = (e, name, block)   # the Expr is kept alive with its id

    def fresh(self, prefix: str = "t") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def _get(self, e: E.Expr):
        for sc in reversed(self.scopes):
            hit = sc.get(id(e))
            if hit is not None:
                return hit
        return None

    def ref(self, e: E.Expr) -> tuple[str, bool]:
        """A name or literal for ``e`` (emitting what it needs); and whether it is a block."""
        if e.is_const:
            return self.d.lit(e.value), False
        hit = self._get(e)
        if hit is None:
            # nodes already emitted (or literals) are inputs here: list them, don't descend
            def known(n):
                return n.is_const or self._get(n) is not None
            order = E.topological(e, stop=known)
            bound = {id(n) for n in order if known(n)}
            for node in order:
                if id(node) in bound:
                    continue
                if not node.args:
                    if node.op == LEAF and node.name == "F":     # a constant as a block
                        name = self.fresh("f")
                        self.assign(name, self.d.full(self.d.lit(node.value)))
                        self.bind(node, name, True)
                        continue
                    raise CompileError(f"internal error: unbound leaf {node.op} {node.name or ''}")
                ex = self.d.expand(node)
                if ex is not None:     # the dialect writes this op through other nodes (CSE)
                    self.bind(node, *self.ref(ex))
                    continue
                refs = [self.ref(c) for c in node.args]
                strs = [r for r, _ in refs]
                if all(c.is_const for c in node.args):
                    # constants that did not fold (a non-finite result such as 1/0): let the
                    # target compute it (IEEE inf/NaN) instead of Python arithmetic on literals
                    strs[0] = self.d.computed_const(strs[0])
                name = self.fresh()
                is_block = any(b for _, b in refs)
                if is_block or self.prologue is None:
                    self.assign(name, self.d.fill(node, strs))
                else:
                    self.assign_invariant(name, self.d.fill(node, strs))
                self.bind(node, name, is_block)
            hit = self._get(e)
        return hit[1], hit[2]

    def block(self, e: E.Expr) -> str:
        """``e`` as a block value."""
        r, is_block = self.ref(e)
        if is_block:
            return r
        if e.is_const:
            return self.d.full(r)
        return self.d.to_block(r)
