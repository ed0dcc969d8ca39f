"""Expr: an activation function as an immutable, hash-consed DAG.

Every node is interned: building the same (op, args, value) twice returns the same object,
so a shared sub-expression such as the two ``GELU(x)`` of ``SiLU(x) GELU(x) + GELU(x)`` is one
node, structural equality is identity, and common sub-expressions are computed once by the
compiler. Node kinds: the variable ``x``, numeric constants, named learnable parameters
(``{name=init}`` in the grammar) and applications of registry ops.

Traversals are iterative (explicit stacks) so deep expressions never hit Python's recursion limit.
"""
from __future__ import annotations

import math
import os
import threading
import weakref
from typing import TYPE_CHECKING, Iterator, Sequence

from grafs.errors import GrafsError
from grafs.ops import get_op

if TYPE_CHECKING:  # pragma: no cover
    import networkx

VAR, CONST, PARAM = "x", "const", "param"

_INTERN: "weakref.WeakValueDictionary[tuple, Expr]" = weakref.WeakValueDictionary()
# one node per key across threads too (a C cell's source is generated in a build thread while
# the search builds expressions): two threads creating the same node at once would each keep
# their own, and code generation, which binds nodes by identity, would then differ or fail
_INTERN_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    # a lock another thread held when the process forked would never be released in the child
    global _INTERN_LOCK
    _INTERN_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


class Expr:
    """A node of an activation-function DAG (see module docstring).

    Build with :func:`grafs.parse`, the helpers below (``var()``, ``const()``, ``param()``,
    ``call()``) or Python operators (``2 * gelu + x``).
    """

    __slots__ = ("op", "args", "value", "name", "_depth", "__weakref__")

    op: str
    args: tuple["Expr", ...]
    value: float | None
    name: str | None

    def __new__(cls, op: str, args: Sequence["Expr"] = (), value: float | None = None,
                name: str | None = None) -> "Expr":
        args = tuple(args)
        if value is not None:
            value = float(value)
            if not math.isfinite(value):
                raise GrafsError(f"constants must be finite numbers, got {value!r}")
            vkey: tuple | None = (value, math.copysign(1.0, value))
        else:
            vkey = None
        key = (op, tuple(id(a) for a in args), vkey, name)
        node = _INTERN.get(key)
        if node is not None:
            return node
        new = object.__new__(cls)
        object.__setattr__(new, "op", op)
        object.__setattr__(new, "args", args)
        object.__setattr__(new, "value", value)
        object.__setattr__(new, "name", name)
        object.__setattr__(new, "_depth", 1 + max((a._depth for a in args), default=0))
        with _INTERN_LOCK:      # another thread may have made it meanwhile: theirs is the node
            node = _INTERN.get(key)
            if node is None:
                node = _INTERN[key] = new
        return node

    def __setattr__(self, key, value):  # immutable: interning relies on it
        raise AttributeError("Expr is immutable")

    def __reduce__(self):  # pickling: rebuilt node by node (interned again on loading); text
        return (Expr, (self.op, self.args, self.value, self.name))  # cannot hold a hole or leaf

    def __copy__(self):     # immutable and interned: a copy is the node itself
        return self

    def __deepcopy__(self, memo):
        return self

    # -- structure ----------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._depth

    @property
    def is_const(self) -> bool:
        return self.op == CONST

    def nodes(self) -> list["Expr"]:
        """All distinct nodes, arguments before their users (topological order)."""
        return topological(self)

    def params(self) -> dict[str, float]:
        """Learnable scalars of the expression: name -> initial value, in order of appearance."""
        return {n.name: n.value for n in self.nodes() if n.op == PARAM}

    def depends_on_x(self) -> bool:
        return any(n.op == VAR for n in self.nodes())

    @property
    def graph(self) -> "networkx.DiGraph":
        """The DAG as a networkx DiGraph: one node per distinct sub-expression.

        Node attributes: ``op``, ``value`` (constants and parameter inits), ``name`` (parameters),
        ``label`` (printable). Edges go from an argument to its user; the edge attribute
        ``positions`` lists the argument slots it fills (``x*x`` has one edge with [0, 1]).
        """
        import networkx as nx

        g = nx.DiGraph()
        order = self.nodes()
        index = {id(n): i for i, n in enumerate(order)}
        for i, n in enumerate(order):
            g.add_node(i, op=n.op, value=n.value, name=n.name, label=_label(n))
            for pos, a in enumerate(n.args):
                j = index[id(a)]
                if g.has_edge(j, i):
                    g.edges[j, i]["positions"].append(pos)
                else:
                    g.add_edge(j, i, positions=[pos])
        g.graph["root"] = len(order) - 1
        return g

    # -- conversions (implemented in sibling modules) ------------------------------------
    def __str__(self) -> str:
        from grafs.grammar.printer import to_text
        return to_text(self)

    def __repr__(self) -> str:
        return f"grafs.parse({str(self)!r})"

    def latex(self) -> str:
        from grafs.grammar.printer import to_latex
        return to_latex(self)

    def to_sympy(self, elementary: bool = False):
        """A sympy expression in the symbol ``x``. With ``elementary=True`` activations are
        rewritten into elementary functions (erf, exp, Piecewise, …)."""
        from grafs.grammar.sympy_bridge import to_sympy
        return to_sympy(self, elementary=elementary)

    @staticmethod
    def from_sympy(expr) -> "Expr":
        from grafs.grammar.sympy_bridge import from_sympy
        return from_sympy(expr)

    def simplify(self) -> "Expr":
        from grafs.grammar.simplify import simplify
        return simplify(self)

    def derivative(self) -> "Expr":
        """d/dx as a new Expr, by the chain rule over the registry's derivative rules."""
        from grafs.grammar.derivative import derivative
        return derivative(self)

    # -- Python operators build expressions --------------------------------------------
    def __add__(self, o): return call("add", self, as_expr(o))
    def __radd__(self, o): return call("add", as_expr(o), self)
    def __sub__(self, o): return call("sub", self, as_expr(o))
    def __rsub__(self, o): return call("sub", as_expr(o), self)
    def __mul__(self, o): return call("mul", self, as_expr(o))
    def __rmul__(self, o): return call("mul", as_expr(o), self)
    def __truediv__(self, o): return call("div", self, as_expr(o))
    def __rtruediv__(self, o): return call("div", as_expr(o), self)
    def __pow__(self, o): return call("pow", self, as_expr(o))
    def __rpow__(self, o): return call("pow", as_expr(o), self)
    def __neg__(self): return call("neg", self)
    def __pos__(self): return self


def _label(n: Expr) -> str:
    if n.op == CONST:
        return repr(n.value)
    if n.op == PARAM:
        return f"{{{n.name}={n.value!r}}}"
    return n.op


def topological(root: Expr, stop=None) -> list[Expr]:
    """Iterative post-order DFS: every node once, arguments first.

    ``stop(node) -> bool``: such nodes are listed but their arguments are not visited.
    """
    out: list[Expr] = []
    seen: set[int] = set()
    stack: list[tuple[Expr, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            out.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if stop is not None and stop(node):
            continue
        for a in reversed(node.args):
            if id(a) not in seen:
                stack.append((a, False))
    return out


def iter_nodes(root: Expr) -> Iterator[Expr]:
    yield from topological(root)


def rewrite(root: Expr, fn, keep=None, memo: dict | None = None):
    """Map ``root`` bottom-up: ``fn(node, args)`` is called once per distinct node, arguments
    first, with ``args`` the list of what it returned for the node's arguments, and its result
    stands for the node. The one graph rebuild pass: ``fn`` returns the node's replacement
    (:func:`with_args` rebuilds it unchanged over its new arguments), so a shared sub-expression
    is rewritten once and stays one node. Iterative, memoised on the interned nodes.

    ``keep(node) -> bool``: such nodes stand for themselves, their arguments not visited.
    ``memo``: node id -> result, to share the work between calls over overlapping DAGs (a term
    and its partial derivatives); nodes already in it are not mapped again."""
    memo = {} if memo is None else memo
    for n in topological(root, stop=keep):
        if id(n) in memo:
            continue
        memo[id(n)] = n if keep is not None and keep(n) else fn(n, [memo[id(a)] for a in n.args])
    return memo[id(root)]


def with_args(n: Expr, args: Sequence[Expr]) -> Expr:
    """``n`` over the arguments ``args`` (``n`` itself for a leaf, or when they are its own)."""
    return Expr(n.op, args, n.value, n.name) if args else n


def substitute(root: Expr, mapping: dict[int, Expr], memo: dict | None = None) -> Expr:
    """``root`` with each node whose id is a key of ``mapping`` replaced by its value (``memo``
    as in :func:`rewrite`)."""
    return rewrite(root, lambda n, args: mapping[id(n)] if id(n) in mapping else with_args(n, args),
                   memo=memo)


# -- constructors ----------------------------------------------------------------------
def var() -> Expr:
    """The input variable ``x``."""
    return Expr(VAR)


def const(value: float) -> Expr:
    return Expr(CONST, value=value)


def param(name: str, init: float) -> Expr:
    """A learnable scalar named ``name`` with initial value ``init`` (``{name=init}``)."""
    return Expr(PARAM, value=init, name=name)


def as_expr(v) -> Expr:
    if isinstance(v, Expr):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return const(float(v))
    raise GrafsError(f"cannot use {type(v).__name__} {v!r} in an expression; use numbers or Expr")


def call(op: str, *args) -> Expr:
    """Apply registry op ``op`` (canonical name or alias) to ``args`` (Expr or numbers).

    Missing trailing scalar arguments (e.g. the slope of ``leaky_relu``) take their defaults.
    """
    spec = get_op(op)
    args = [as_expr(a) for a in args]
    n_min, n_max = spec.arity, spec.arity + len(spec.scalars)
    if not n_min <= len(args) <= n_max:
        raise GrafsError(f"{spec.name} takes {spec.arity_text()}, got {len(args)}")
    for s in spec.scalars[len(args) - spec.arity:]:
        args.append(const(s.default))
    for s, a in zip(spec.scalars, args[spec.arity:]):
        if a.depends_on_x():
            raise GrafsError(f"the {s.name} of {spec.name} must be a number or a learnable "
                             f"{{param}}, not an expression of x")
    return Expr(spec.name, args)


# the registry's derivative rules and clips build their expressions through this (grafs.ops.node)
Expr.call = staticmethod(call)
