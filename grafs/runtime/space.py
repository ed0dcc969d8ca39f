"""Search spaces: a template over the grammar with unary holes ``U`` and binary holes ``B``,
plus the candidate ops of each kind of hole (search-op names from grafs.ops.SEARCH_OPS)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import lark

from grafs.errors import ParseError, SearchSpaceError
from grafs.grammar import expr as E
from grafs.ops import GRAFS_BINARY, GRAFS_UNARY, SEARCH_OPS

GRAFS_TEMPLATE = "B(U(B(U(x), U(x))), U(x))"
HOLE = "hole"
_ARITY = {"U": 1, "B": 2}
_KIND = {"U": "unary", "B": "binary"}


@dataclass(frozen=True)
class Hole:
    """One edge (unary, ``U``) or vertex (binary, ``B``) of the cell, numbered in evaluation order."""
    index: int
    kind: str                    # "unary" | "binary"
    name: str                    # "U0", "B1", …: kind letter + position among all holes
    ops: tuple[str, ...]         # candidate search ops
    node: E.Expr                 # the hole node inside the template Expr


def parse_template(text: str) -> tuple[E.Expr, list[E.Expr]]:
    """Template Expr (holes as ``hole`` nodes) and the hole nodes in evaluation order."""
    from grafs.grammar.parser import convert, parse_tree

    tree = parse_tree(text)
    holes: list[E.Expr] = []

    def hook(node, kids):
        if node.data != "call":
            return None
        tok, *args = kids
        letter = tok.value.upper()
        if letter not in _ARITY or len(tok.value) != 1:
            return None
        args = [a for a in args if a is not None]
        if len(args) != _ARITY[letter]:
            raise SearchSpaceError(
                f"hole {letter} takes {_ARITY[letter]} argument(s), got {len(args)} "
                f"(line {tok.line}, column {tok.column}): {text}")
        h = E.Expr(HOLE, args, name=f"{letter}{len(holes)}")
        holes.append(h)
        return h

    try:
        root = convert(tree, text, hook)
    except ParseError:
        raise
    if not holes:
        raise SearchSpaceError(f"template {text!r} has no holes: write U(...) for a unary and "
                               f"B(..., ...) for a binary hole, e.g. {GRAFS_TEMPLATE!r}")
    if not root.depends_on_x():
        raise SearchSpaceError(f"template {text!r} does not use the input x")
    return root, holes


class SearchSpace:
    """A cell template plus candidate ops per hole.

    >>> space = SearchSpace.grafs()          # the paper's cell: 110 candidate ops
    >>> SearchSpace("B(U(x), U(x))", unary=["relu", "gelu", "silu"], binary=["add", "mul"])
    """

    def __init__(self, template: str = GRAFS_TEMPLATE, unary: Sequence[str] = GRAFS_UNARY,
                 binary: Sequence[str] = GRAFS_BINARY,
                 ops: Mapping[str, Sequence[str]] | None = None,
                 clip: bool = True, ell: float = 10.0, normalize: bool = False):
        self.template = template
        # scale each op's mixture weight by 1/RMS(op) on N(0, 1) (grafs.runtime.normalize)
        self.normalize = bool(normalize)
        self.root, nodes = parse_template(template)
        self.clip = bool(clip)
        self.ell = float(ell)
        per_kind = {"unary": self._check_ops(unary, "unary"), "binary": self._check_ops(binary, "binary")}
        overrides = dict(ops or {})
        holes = []
        n_u = n_b = 0
        for i, node in enumerate(nodes):
            kind = "unary" if node.name[0] == "U" else "binary"
            name = f"U{n_u}" if kind == "unary" else f"B{n_b}"
            n_u, n_b = n_u + (kind == "unary"), n_b + (kind == "binary")
            chosen = per_kind[kind]
            if name in overrides:
                chosen = self._check_ops(overrides.pop(name), kind, where=name)
            holes.append(Hole(i, kind, name, chosen, node))
        if overrides:
            raise SearchSpaceError(f"ops given for unknown hole(s) {sorted(overrides)}; the template's "
                                   f"holes are {[h.name for h in holes]}")
        self.holes: tuple[Hole, ...] = tuple(holes)

    @staticmethod
    def _check_ops(names: Sequence[str], kind: str, where: str = "") -> tuple[str, ...]:
        import difflib
        if isinstance(names, str):
            names = [names]
        names = list(names)
        if not names:
            raise SearchSpaceError(f"the {kind} op set{' of ' + where if where else ''} is empty")
        for n in names:
            op = SEARCH_OPS.get(n)
            if op is None:
                close = difflib.get_close_matches(n, list(SEARCH_OPS), n=3)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                known = ", ".join(k for k, v in SEARCH_OPS.items() if v.kind == kind)
                raise SearchSpaceError(f"unknown {kind} search op {n!r}{hint} Known {kind} ops: {known}")
            if op.kind != kind:
                raise SearchSpaceError(f"{n!r} is a {op.kind} op and cannot fill a {kind} hole")
        if len(set(names)) != len(names):
            raise SearchSpaceError(f"duplicate ops in the {kind} set: {names}")
        return tuple(names)

    @classmethod
    def grafs(cls, extra_unary: Sequence[str] = (), **kw) -> "SearchSpace":
        """The paper's cell ``B(U(B(U(x), U(x))), U(x))`` with its 23 unary and 9 binary ops.

        ``extra_unary``: further unary search ops for every unary hole, outside the paper's
        space, e.g. ``grafs.ops.EXTRA_UNARY`` (``("sin", "cos")``).
        """
        extra = (extra_unary,) if isinstance(extra_unary, str) else tuple(extra_unary)
        return cls(GRAFS_TEMPLATE, GRAFS_UNARY + extra, GRAFS_BINARY, **kw)

    @property
    def num_ops(self) -> int:
        return sum(len(h.ops) for h in self.holes)

    def relax(self, mode: str = "auto", seed: int | None = None):
        """The relaxed (DrNAS) cell as an nn.Module, in RelaxedCell's default mode ("auto": the
        Triton cell on CUDA, the C or lean cell elsewhere; "fused" compiled with Inductor, minutes
        on a CPU, was the default here); see :class:`grafs.runtime.cell.RelaxedCell`."""
        from grafs.runtime.cell import RelaxedCell
        return RelaxedCell(self, mode=mode, seed=seed)

    def __repr__(self) -> str:
        sets = "; ".join(f"{h.name}: {len(h.ops)} ops" for h in self.holes)
        return f"SearchSpace({self.template!r}, {self.num_ops} candidate ops — {sets})"
