"""The ``triton`` backend: grafs' own generated Triton kernels.

For a formula, :class:`TritonFormula` generates one forward and one backward kernel from the
lowered :class:`~grafs.compiler.lower.Program`:

* the forward loads ``x`` (fp32/fp16/bf16), computes in fp32 with the registry's Triton templates
  (``Op.triton``) and stores in the input's dtype;
* the backward recomputes from ``x`` and evaluates the gradient taken *symbolically* in reverse
  mode over the Expr DAG (each op's registered partials ``Op.grad``; partials w.r.t. an op's
  learnable scalar arguments are derived once per op with sympy), simplified by constant
  folding, hash-consing (CSE) and the select rules below. Gradients of learnable parameters are
  reductions: each program writes ``tl.sum`` of its block to an fp32 buffer of partial sums,
  reduced by a second small ``sum`` (deterministic, no atomics).

Both run inside ``torch.library.custom_op`` s (fake impls and autograd registered), so
``torch.compile`` traces through them; autograd saves only the input and the parameter vector.

:class:`TritonCell` does the same for the relaxed GRAFS cell, compiled once for the full op set:
all active ops of all holes in one pass over ``x``; the mixture weights ``w``, the γ vector ``g``
and an active-op mask are tensors, so dropping an op (progressive shrinking) never generates a
new kernel: an inactive op costs one uniform scalar branch (``if tl.load(mask_ptr + k) != 0``).
Its backward produces the gradients for ``x``, ``w`` and ``g`` (the latter two as reductions).

Numerics of the generated gradient:

* ``step(z)`` factors become selects ``where(z > 0, P, N)``; products with a select that has a
  zero branch are pushed into the select, so ``0 · inf`` never turns into NaN (the derivative of
  ``elu`` is ``where(x > 0, 1, α·eˣ)``, not ``step(x) + (1 − step(x))·α·eˣ``);
* ``max``/``min``/``clamp`` follow torch's tie rules (a bound given as a number passes the
  gradient on ties like ``torch.clamp``; two tensors split it in half like ``torch.maximum``);
* ``exp(u) − 1`` is emitted as ``expm1`` and ``1 − σ(u)`` as ``σ(−u)``; templates use
  ``expm1``/``log1p`` and overflow-free softplus/logsigmoid; parameter-gradient sums mask the
  padding lanes of the last block.

Running: on CUDA (or another GPU Triton supports), or on any device with ``TRITON_INTERPRET=1``
(Triton's CPU interpreter, slow; read from ``os.environ`` at call time). The interpreter cannot
call libdevice, so the interpreter variant of a kernel file binds ``libdevice`` to float64
stand-ins built from ``tl`` builtins, and ``tl`` to a thin wrapper that rewrites the few
standard-library functions the kernels use (``tl.sum``, ``tl.zeros``, ``tl.sigmoid``) from
builtins: with that, the interpreter works whether or not ``TRITON_INTERPRET`` was set when
``triton`` was first imported (Triton itself decides it at import/decoration time).

Generated sources contain only registry templates, generated names and ``repr`` of numbers; they
are written once under their content hash by :func:`grafs.compiler.codegen.load_source`.
``triton`` is imported only when a kernel runs (never at ``import grafs``).
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
from typing import Sequence

import torch

from grafs.compiler.codegen import load_source
from grafs.compiler.lower import DEFAULT_ELL, Program, fold_constants, lower
from grafs.errors import CompileError
from grafs.grammar import expr as E
from grafs.grammar.derivative import fold
from grafs.ops import OPS, SEARCH_OPS

__all__ = ["TritonFormula", "TritonCell", "triton_source", "cell_source", "program_expr",
           "formula_gradients", "kernel_cache_size", "interpreting"]

# ---------------------------------------------------------------------------------------------
# internal nodes: selects, expm1 and named runtime leaves (never user-visible, never in OPS)
_SEL = "grafs_select"      # _SEL(z, P, N) = P where z > 0 else N
_EXPM1 = "grafs_expm1"
_LEAF = "grafs_leaf"       # a runtime value bound to a kernel variable (gy, hole inputs, …)
_INTERNAL = {_SEL: "tl.where({0} > 0, {1}, {2})", _EXPM1: "libdevice.expm1({0})"}


def _leaf(name: str) -> E.Expr:
    return E.Expr(_LEAF, name=name)


def _is0(e: E.Expr) -> bool:
    return e.is_const and e.value == 0.0


def _is_sel(e: E.Expr) -> bool:
    return e.op == _SEL


def _zero_branch(e: E.Expr) -> bool:
    return _is_sel(e) and (_is0(e.args[1]) or _is0(e.args[2]))


def _const_branches(e: E.Expr) -> bool:
    return _is_sel(e) and e.args[1].is_const and e.args[2].is_const


def sel(z, p, n) -> E.Expr:
    """``where(z > 0, p, n)`` with the obvious simplifications."""
    z, p, n = (E.as_expr(v) for v in (z, p, n))
    if z.is_const:
        return p if z.value > 0 else n
    if _is_sel(p) and p.args[0] is z:
        p = p.args[1]
    if _is_sel(n) and n.args[0] is z:
        n = n.args[2]
    if p is n:
        return p
    return E.Expr(_SEL, (z, p, n))


def _eval_const(op: str, vals: list[float]) -> float | None:
    try:
        if op == _EXPM1:
            v = math.expm1(vals[0])
        else:
            spec = OPS[op]
            t = [torch.tensor(v, dtype=torch.float64) for v in vals[: spec.arity]]
            with torch.no_grad():
                v = float(spec.torch(*t, *vals[spec.arity:]))
    except (OverflowError, ValueError, TypeError, RuntimeError):
        return None
    return v if math.isfinite(v) else None


def S(op: str, *args) -> E.Expr:
    """Build ``op(args)`` simplified: :func:`grafs.grammar.derivative.fold` (0/1 factors, constant
    arithmetic), constant evaluation, ``exp(u) - 1 -> expm1(u)`` and the select rules."""
    a = [E.as_expr(v) for v in args]
    if op == _SEL:
        return sel(*a)
    if op == "mul":
        if _is0(a[0]) or _is0(a[1]):
            return E.const(0.0)
        for s, o in ((a[0], a[1]), (a[1], a[0])):
            if _zero_branch(s):
                return sel(s.args[0], S("mul", s.args[1], o), S("mul", s.args[2], o))
    elif op == "div" and _zero_branch(a[0]):
        s = a[0]
        return sel(s.args[0], S("div", s.args[1], a[1]), S("div", s.args[2], a[1]))
    elif op == "neg" and _is_sel(a[0]):
        s = a[0]
        return sel(s.args[0], S("neg", s.args[1]), S("neg", s.args[2]))
    elif op in ("add", "sub"):
        x, y = a
        if _is_sel(x) and _is_sel(y) and x.args[0] is y.args[0]:
            return sel(x.args[0], S(op, x.args[1], y.args[1]), S(op, x.args[2], y.args[2]))
        if _const_branches(x) and y.is_const:
            return sel(x.args[0], S(op, x.args[1], y), S(op, x.args[2], y))
        if _const_branches(y) and x.is_const:
            return sel(y.args[0], S(op, x, y.args[1]), S(op, x, y.args[2]))
        if op == "sub" and x.op == "exp" and y.is_const and y.value == 1.0:
            return E.Expr(_EXPM1, (x.args[0],))
        if op == "sub" and x.is_const and x.value == 1.0 and y.op == "sigmoid":
            return S("sigmoid", S("neg", y.args[0]))      # 1 - σ(u) = σ(-u), no cancellation
        if op == "add":
            for u, c in ((x, y), (y, x)):
                if u.op == "exp" and c.is_const and c.value == -1.0:
                    return E.Expr(_EXPM1, (u.args[0],))
    if op in ("add", "sub", "mul", "div", "neg", "pow"):
        return fold(op, *a)
    if all(v.is_const for v in a) and a:
        v = _eval_const(op, [v.value for v in a])
        if v is not None:
            return E.const(v)
    if op in _INTERNAL:
        return E.Expr(op, a)
    return E.call(op, *a)


def _topo_stop(root: E.Expr, stop: set[int]) -> list[E.Expr]:
    """Post-order over ``root`` not descending into nodes whose id is in ``stop``."""
    return E.topological(root, stop=lambda n: id(n) in stop)


def _rebuild(e: E.Expr, stop: set[int]) -> E.Expr:
    """Rebuild a registry partial through :func:`S` (``step`` -> select), keeping the op's
    arguments (``stop``) as they are so the forward sub-DAG stays shared."""
    memo: dict[int, E.Expr] = {}
    for n in _topo_stop(e, stop):
        if id(n) in stop or not n.args:
            memo[id(n)] = n
            continue
        args = [memo[id(c)] for c in n.args]
        memo[id(n)] = sel(args[0], 1.0, 0.0) if n.op == "step" else S(n.op, *args)
    return memo[id(e)]


# ---------------------------------------------------------------------------------------------
# partial derivatives
def _max_min_partials(op: str, a: E.Expr, b: E.Expr):
    """Partials of max/min with torch's tie rules (the eager backend runs max(a, number) as
    torch.clamp, which passes the gradient on ties, and max(a, b) as torch.maximum, which halves
    it); the registry's ``step`` forms give 0 on ties, wrong e.g. for max(x, |x|) at x > 0."""
    hi_a = S("sub", a, b) if op == "max" else S("sub", b, a)   # > 0 where a is chosen
    hi_b = S("sub", b, a) if op == "max" else S("sub", a, b)
    if b.is_const:
        return sel(hi_b, 0.0, 1.0), None
    if a.is_const:
        return None, sel(hi_a, 0.0, 1.0)
    return sel(hi_a, 1.0, sel(hi_b, 0.0, 0.5)), sel(hi_b, 1.0, sel(hi_a, 0.0, 0.5))


def _partials(n: E.Expr, need: Sequence[bool]) -> list[E.Expr | None]:
    a = n.args
    if n.op == _SEL:
        return [None, sel(a[0], 1.0, 0.0), sel(a[0], 0.0, 1.0)]
    if n.op == _EXPM1:
        return [S("exp", a[0])]
    if n.op in ("max", "min"):
        return list(_max_min_partials(n.op, a[0], a[1]))
    spec = OPS.get(n.op)
    if spec is None or spec.grad is None:
        raise CompileError(f"op {n.op!r} has no symbolic derivative (grafs.ops.Op.grad), which the "
                           f"triton backend needs for its backward kernel; use backend='inductor' "
                           f"or 'eager' for formulas with {n.op!r}")
    out: list[E.Expr | None] = [None] * len(a)
    stop = {id(c) for c in a}
    if any(need[: spec.arity]):
        raw = spec.grad(*a)
        for i in range(spec.arity):
            if need[i]:
                out[i] = _rebuild(E.as_expr(raw[i]), stop)
    for i in range(spec.arity, len(a)):
        if need[i]:
            out[i] = _scalar_partial(spec.name, a, i)
    return out


@functools.lru_cache(maxsize=None)
def _scalar_partial_sympy(op_name: str, i: int):
    import sympy as sp
    spec = OPS[op_name]
    d = tuple(sp.Dummy(f"a{j}", real=True) for j in range(spec.arity + len(spec.scalars)))
    return d, sp.diff(spec.sympy(*d), d[i])


def _scalar_partial(op_name: str, args: Sequence[E.Expr], i: int) -> E.Expr:
    """d op / d (scalar argument i), derived with sympy from the registry's ``Op.sympy``."""
    d, s = _scalar_partial_sympy(op_name, i)
    return _from_sympy(s, {dd: a for dd, a in zip(d, args)}, op_name)


def _from_sympy(s, env: dict, op_name: str) -> E.Expr:
    import sympy as sp
    from grafs.grammar.sympy_bridge import _NATIVE

    def fail():
        return CompileError(f"cannot express the derivative of {op_name!r} w.r.t. its learnable "
                            f"scalar argument for the triton backend (sympy gave {s}); keep that "
                            f"argument a number or use backend='inductor'")

    def cond_z(c):  # (z, flip): c  <=>  z > 0 (flip: c <=> not z > 0)
        if isinstance(c, sp.StrictGreaterThan):
            return conv(c.lhs - c.rhs), False
        if isinstance(c, sp.StrictLessThan):
            return conv(c.rhs - c.lhs), False
        if isinstance(c, sp.GreaterThan):
            return conv(c.rhs - c.lhs), True
        if isinstance(c, sp.LessThan):
            return conv(c.lhs - c.rhs), True
        raise fail()

    def conv(t):
        if t in env:
            return env[t]
        if t.is_Number:
            return E.const(float(t))
        if t.is_Add:
            out = None
            for u in t.args:
                v = conv(u)
                out = v if out is None else S("add", out, v)
            return out
        if t.is_Mul:
            out = E.const(1.0)
            for u in t.args:
                if u.is_Pow and u.exp.is_Number and u.exp < 0:
                    out = S("div", out, conv(u.base ** (-u.exp)))
                else:
                    out = S("mul", out, conv(u))
            return out
        if t.is_Pow:
            b, ex = t.args
            if b == sp.E:
                return S("exp", conv(ex))
            if ex == -1:
                return S("div", 1.0, conv(b))
            if ex == sp.Rational(1, 2):
                return S("sqrt", conv(b))
            return S("pow", conv(b), conv(ex))
        if isinstance(t, sp.Piecewise):
            *rest, (last, c_last) = t.args
            if c_last != sp.true:
                raise fail()
            out = conv(last)
            for expr_, c in reversed(rest):
                z, flip = cond_z(c)
                out = sel(z, out, conv(expr_)) if flip else sel(z, conv(expr_), out)
            return out
        if isinstance(t, sp.Heaviside):
            return sel(conv(t.args[0]), 1.0, 0.0)
        if isinstance(t, (sp.Max, sp.Min)):
            name = "max" if isinstance(t, sp.Max) else "min"
            out = conv(t.args[0])
            for u in t.args[1:]:
                out = S(name, out, conv(u))
            return out
        if t.func in _NATIVE:
            return S(_NATIVE[t.func], *[conv(u) for u in t.args])
        name = getattr(t.func, "grafs_op", None)
        if name is not None:
            return S(name, *[conv(u) for u in t.args])
        raise fail()

    return conv(s)


def _rewrite_for_grad(root: E.Expr) -> E.Expr:
    """clamp(a, lo, hi) -> min(max(a, lo), hi): the same values, and the max/min partials then
    give torch's gradient for both number and learnable bounds."""
    memo: dict[int, E.Expr] = {}
    for n in E.topological(root):
        if not n.args:
            memo[id(n)] = n
            continue
        args = [memo[id(c)] for c in n.args]
        if n.op == "clamp":
            memo[id(n)] = E.call("min", E.call("max", args[0], args[1]), args[2])
        else:
            memo[id(n)] = E.Expr(n.op, args, n.value, n.name)
    return memo[id(root)]


def reverse(root: E.Expr, wrt: Sequence[E.Expr]) -> list[E.Expr]:
    """Symbolic reverse mode: d root / d w for each leaf w in ``wrt`` (seed 1), one sweep over the
    DAG in reverse topological order accumulating adjoints through :func:`S`."""
    nodes = E.topological(root)
    wanted = {id(w) for w in wrt}
    req: dict[int, bool] = {}
    for n in nodes:
        req[id(n)] = id(n) in wanted or any(req[id(c)] for c in n.args)
    adj: dict[int, E.Expr] = {id(root): E.const(1.0)} if req[id(root)] else {}
    for n in reversed(nodes):
        A = adj.get(id(n))
        if A is None or not n.args or _is0(A):
            continue
        need = [req[id(c)] for c in n.args]
        if not any(need):
            continue
        for c, needed, p in zip(n.args, need, _partials(n, need)):
            if not needed or p is None:
                continue
            contrib = S("mul", A, p)
            if _is0(contrib):
                continue
            prev = adj.get(id(c))
            adj[id(c)] = contrib if prev is None else S("add", prev, contrib)
    return [adj.get(id(w), E.const(0.0)) for w in wrt]


def program_expr(prog: Program) -> E.Expr:
    """The Expr a (formula) Program computes, rebuilt node by node."""
    init = dict(prog.params)
    vals: list[E.Expr] = []

    def arg(a) -> E.Expr:
        k = a[0]
        if k == "x":
            return E.var()
        if k == "t":
            return vals[a[1]]
        if k == "c":
            return E.const(a[1])
        if k == "p":
            return E.param(a[1], init.get(a[1], 0.0))
        if k == "F":      # a constant where a tensor shaped like x is needed
            return E.Expr(_LEAF, value=a[1], name="F")
        if k in ("w", "g"):
            raise CompileError("this program refers to the relaxed cell's weight/gamma vectors; "
                               "run relaxed cells through grafs.compiler.triton_backend.TritonCell")
        raise CompileError(f"the triton backend does not know program argument {a!r}")

    for ins in prog.instrs:
        vals.append(E.Expr(ins.op, [arg(a) for a in ins.args]))
    return arg(prog.result)


def formula_gradients(expr: E.Expr) -> dict[str, E.Expr]:
    """d expr / dx and d expr / d{param} as simplified Exprs (internal select nodes included):
    what the backward kernel evaluates, exposed for inspection and tests."""
    params = [n for n in expr.nodes() if n.op == E.PARAM]
    g = _rewrite_for_grad(expr)
    gp = [n for n in g.nodes() if n.op == E.PARAM]
    by_name = {p.name: p for p in gp}
    d = reverse(g, [E.var()] + [by_name.get(p.name, p) for p in params])
    return {"x": d[0], **{p.name: v for p, v in zip(params, d[1:])}}


# ---------------------------------------------------------------------------------------------
# source emission
def _lit(v: float) -> str:
    r = repr(float(v))
    return f"({r})" if r.startswith("-") else r


class _Emitter:
    """Straight-line Triton statements from Expr DAGs, each node once per scope (CSE)."""

    def __init__(self, indent: str = "    "):
        self.lines: list[str] = []
        self.ind = indent
        self.scopes: list[dict[int, tuple[E.Expr, str, bool]]] = [{}]
        self.count = 0

    def line(self, s: str) -> None:
        self.lines.append(self.ind + s)

    def open(self, header: str) -> None:
        self.line(header)
        self.ind += "    "
        self.scopes.append({})

    def close(self) -> None:
        self.ind = self.ind[:-4]
        self.scopes.pop()

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
            return _lit(e.value), False
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
                    if node.op == _LEAF and node.name == "F":     # a constant as a block
                        name = self.fresh("f")
                        self.line(f"{name} = tl.full([BLOCK], {_lit(node.value)}, tl.float32)")
                        self.bind(node, name, True)
                        continue
                    raise CompileError(f"internal error: unbound leaf {node.op} {node.name or ''}")
                refs = [self.ref(c) for c in node.args]
                strs = [r for r, _ in refs]
                if all(c.is_const for c in node.args):
                    # constants that did not fold (a non-finite result such as 1/0): let Triton
                    # compute it (IEEE inf/NaN) instead of Python arithmetic on literals
                    strs[0] = f"tl.full([], {strs[0]}, tl.float32)"
                name = self.fresh()
                self.line(f"{name} = {_fill(node, strs)}")
                self.bind(node, name, any(b for _, b in refs))
            hit = self._get(e)
        return hit[1], hit[2]

    def block(self, e: E.Expr) -> str:
        """``e`` as a [BLOCK] fp32 value."""
        r, is_block = self.ref(e)
        if is_block:
            return r
        if e.is_const:
            return f"tl.full([BLOCK], {r}, tl.float32)"
        return f"({r} + tl.zeros([BLOCK], tl.float32))"


def _template(op: str) -> str:
    if op in _INTERNAL:
        return _INTERNAL[op]
    spec = OPS.get(op)
    t = getattr(spec, "triton", None) if spec is not None else None
    if not t:
        raise CompileError(f"op {op!r} has no Triton template (grafs.ops.Op.triton), so the triton "
                           f"backend cannot compile formulas using it; use backend='inductor' or "
                           f"'eager', or register the op with a triton=... template")
    return t


def _fill(n: E.Expr, refs: list[str]) -> str:
    if n.op == "pow" and n.args[1].is_const:
        v, r = n.args[1].value, refs[0]
        if v == 2.0:
            return f"({r} * {r})"
        if v == 3.0:
            return f"({r} * {r} * {r})"
        if v == 0.5:
            return f"tl.sqrt_rn({r})"
        if v == -1.0:
            return f"(1.0 / {r})"
    return _template(n.op).format(*refs)


def _check_templates(*roots: E.Expr) -> None:
    """Raise the CompileError naming the first op without a Triton template."""
    for r in roots:
        for n in E.topological(r):
            if n.args:
                _template(n.op)


# -- kernel file preludes --------------------------------------------------------------------
_PRELUDE_GPU = """\
import triton
import triton.language as tl
from triton.language.extra import libdevice
"""

_PRELUDE_INTERP = '''\
import triton
import triton.language as _tl


class _Lang:
    """triton.language for the Triton interpreter: everything forwards to it, except the few
    standard-library (@jit) functions the kernels use, rebuilt from builtins so they run whether
    or not TRITON_INTERPRET was set when triton was imported."""

    def __getattr__(self, name):
        return getattr(_tl, name)

    @staticmethod
    def sum(x, axis=None):
        return _tl.reduce(x, axis, _tl.standard._sum_combine)

    @staticmethod
    def zeros(shape, dtype):
        return _tl.full(shape, 0, dtype)

    @staticmethod
    def zeros_like(x):
        return _tl.full(x.shape, 0, x.dtype)

    @staticmethod
    def sigmoid(x):
        return 1.0 / (1.0 + _tl.exp(-x))


tl = _Lang()


def _f64(v):
    return v.to(_tl.float64) if isinstance(v, _tl.tensor) else v


def _z64(v):
    return _tl.full(v.shape, 0, _tl.float64) if isinstance(v, _tl.tensor) else 0.0


class libdevice:
    """Stand-ins for the libdevice functions (the interpreter has no extern calls), from tl
    builtins, evaluated in float64 and rounded to float32."""

    @staticmethod
    def expm1(x):
        z = _f64(x)
        small = z * (1.0 + z * (0.5 + z * 0.16666666666666666))
        return _tl.where(_tl.abs(z) < 1e-5, small, _tl.exp(z) - 1.0).to(_tl.float32)

    @staticmethod
    def log1p(x):
        z = _f64(x)
        small = z * (1.0 - z * (0.5 - z * 0.3333333333333333))
        return _tl.where(_tl.abs(z) < 1e-5, small, _tl.log(1.0 + z)).to(_tl.float32)

    @staticmethod
    def sinh(x):
        z = _f64(x)
        return _tl.where(_tl.abs(z) < 1e-5, z, 0.5 * (_tl.exp(z) - _tl.exp(-z))).to(_tl.float32)

    @staticmethod
    def cosh(x):
        z = _f64(x)
        return (0.5 * (_tl.exp(z) + _tl.exp(-z))).to(_tl.float32)

    @staticmethod
    def tanh(x):
        z = _f64(x)
        r = 1.0 - 2.0 / (_tl.exp(2.0 * z) + 1.0)
        return _tl.where(_tl.abs(z) < 1e-5, z, r).to(_tl.float32)

    @staticmethod
    def asinh(x):
        z = _f64(x)
        a = _tl.abs(z)
        r = _tl.where(a < 1e-5, a, _tl.log(a + _tl.sqrt(a * a + 1.0)))
        return _tl.where(z < 0, -r, r).to(_tl.float32)

    @staticmethod
    def atan(x):
        z = _f64(x)
        a = _tl.abs(z)
        inv = a > 1.0
        t = _tl.where(inv, 1.0 / _tl.where(inv, a, 1.0), a)
        t = t / (1.0 + _tl.sqrt(1.0 + t * t))    # atan(t) = 2 atan(t / (1 + sqrt(1 + t^2)))
        t = t / (1.0 + _tl.sqrt(1.0 + t * t))    # |t| <= tan(pi/16)
        t2 = t * t
        s = t2 * 0.0
        for k in range(9, -1, -1):
            s = s * t2 + (1.0 if k % 2 == 0 else -1.0) / (2 * k + 1)
        r = 4.0 * t * s
        r = _tl.where(inv, 1.5707963267948966 - r, r)
        return _tl.where(z < 0, -r, r).to(_tl.float32)

    @staticmethod
    def pow(a, b):
        za = _f64(a) + _z64(b)
        zb = _f64(b) + _z64(a)
        r = _tl.exp(zb * _tl.log(_tl.abs(za)))
        fb = _tl.floor(zb)
        odd = (fb == zb) & (_tl.abs(fb - 2.0 * _tl.floor(fb * 0.5)) == 1.0)
        r = _tl.where((za < 0) & odd, -r, r)
        r = _tl.where((za < 0) & (fb != zb), float("nan"), r)
        return _tl.where(zb == 0, 1.0, r).to(_tl.float32)
'''

_HEAD = """\
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
"""


def _module(kind: str, text: str, body: str, interp: bool) -> str:
    safe = " ".join(text.split())
    return (f"# generated by grafs ({kind}, Triton{' interpreter' if interp else ''}) from: {safe}\n"
            + (_PRELUDE_INTERP if interp else _PRELUDE_GPU) + "\n\n" + body)


# -- formula kernels ---------------------------------------------------------------------------
def _formula_body(prog: Program) -> str:
    root = program_expr(prog)
    X, GY = E.var(), _leaf("gy")
    names = [n for n, _ in prog.params]
    _check_templates(root)
    groot = _rewrite_for_grad(root)
    by_name = {n.name: n for n in groot.nodes() if n.op == E.PARAM}
    pleaves = [by_name.get(nm, E.param(nm, v)) for nm, v in prog.params]
    adj = reverse(groot, [X] + pleaves)
    gx = S("mul", GY, adj[0])
    gps = [S("mul", GY, d) for d in adj[1:]]
    _check_templates(gx, *gps)

    loads = [f"    p{i} = tl.load(p_ptr + {i}).to(tl.float32)  # {{{nm}}}\n"
             for i, nm in enumerate(names)]
    fwd = _Emitter()
    fwd.bind(X, "x")
    for i, nm in enumerate(names):
        fwd.bind(E.param(nm, dict(prog.params)[nm]), f"p{i}", False)
    y = fwd.block(root)
    out = ["@triton.jit",
           "def grafs_fwd(x_ptr, p_ptr, y_ptr, n, BLOCK: tl.constexpr):",
           _HEAD + "".join(loads) + "\n".join(fwd.lines) + ("\n" if fwd.lines else "")
           + f"    tl.store(y_ptr + offs, {y}.to(y_ptr.dtype.element_ty), mask=m)\n"]

    bwd = _Emitter()
    bwd.bind(X, "x")
    bwd.bind(GY, "gy")
    for i, pl in enumerate(pleaves):
        bwd.bind(pl, f"p{i}", False)
    gxr = bwd.block(gx)
    stores = [f"    tl.store(gx_ptr + offs, {gxr}.to(gx_ptr.dtype.element_ty), mask=m)"]
    for i, g in enumerate(gps):
        if not _is0(g):
            r = bwd.block(g)
            stores.append(f"    tl.store(gp_ptr + pid * NP + {i}, "
                          f"tl.sum(tl.where(m, {r}, 0.0), axis=0))  # d/d{{{names[i]}}}")
    out += ["",
            "@triton.jit",
            "def grafs_bwd(x_ptr, p_ptr, gy_ptr, gx_ptr, gp_ptr, n, NP: tl.constexpr,"
            " BLOCK: tl.constexpr):",
            _HEAD + "    gy = tl.load(gy_ptr + offs, mask=m, other=0.0).to(tl.float32)\n"
            + "".join(loads) + "\n".join(bwd.lines + stores) + "\n"]
    return "\n".join(out)


def _formula_source(prog: Program, interp: bool) -> str:
    return _module("formula forward and backward", prog.text, _formula_body(prog), interp)


def triton_source(expr, clip: bool = False, ell: float = DEFAULT_ELL) -> str:
    """The generated Triton source (forward and backward kernels) of a formula, as the GPU runs
    it (``grafs compile EXPR --emit triton``). Needs no triton install."""
    from grafs.grammar.parser import parse
    return _formula_source(lower(parse(expr), clip=clip, ell=ell), interp=False)


# -- relaxed-cell kernels ----------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _cell_term(op_name: str, ell: float | None):
    """A search op on generic leaves: (term, input leaves, gamma leaves, partials, and the term
    in the form its partials are taken on, which the backward evaluates so they share nodes)."""
    spec = SEARCH_OPS[op_name]
    hin = [_leaf(f"in{a}") for a in range(1 if spec.kind == "unary" else 2)]
    gam = [_leaf(f"gam{i}") for i in range(len(spec.gammas))]
    term = fold_constants(E.as_expr(spec.build(hin, gam, ell)))
    _check_templates(term)
    gterm = _rewrite_for_grad(term)
    parts = reverse(gterm, hin + gam)
    _check_templates(gterm, *parts)
    return term, hin, gam, parts, gterm


class _CellPlan:
    """The cell template with holes replaced by leaves, each hole's inputs, slots and gammas."""

    def __init__(self, space, slot_of, gamma_of, clip: bool, active=None):
        from grafs.compiler.cell import substitute_holes
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
        live: set[int] = set()
        stack = [self.T]
        while stack:
            e = stack.pop()
            for n in e.nodes():
                if n.op == _LEAF and n.name.startswith("h"):
                    j = int(n.name[1:])
                    if j not in live:
                        live.add(j)
                        stack.extend(inputs[j])
        self.live = [h for h in self.holes if h.index in live]
        for h in self.live:
            for o, _, _ in self.slots[h.index]:
                _cell_term(o, self.ell)
        _check_templates(self.T, *[i for h in self.live for i in inputs[h.index]])

    def hole_refs(self, em: _Emitter, h) -> list[str]:
        refs = []
        for e in self.inputs[h.index]:
            r = em.block(e)
            if not r.isidentifier():
                name = em.fresh("in")
                em.line(f"{name} = {r}")
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
        order: dict = {}
        for h in members:
            for o, k, js in self.slots[h.index]:
                order.setdefault(o if not js else (o, h.index), (o, []))[1].append((h, k, js))
        return list(order.values())

    @staticmethod
    def _any_active(uses) -> str:
        return " + ".join(f"tl.load(mask_ptr + {k}).to(tl.int32)" for _, k, _ in uses) + " != 0"

    def emit_group_forward(self, em: _Emitter, members, refs: list[str]) -> None:
        for h in members:
            em.line(f"h{h.index} = tl.zeros([BLOCK], tl.float32)  # hole {h.name}")
        for o, uses in self.shared_ops(members):
            term, hin, gam, _, _ = _cell_term(o, self.ell)
            if len(uses) == 1:
                h, k, js = uses[0]
                em.open(f"if tl.load(mask_ptr + {k}) != 0:  # {h.name}: {o}")
                self._bind_slot(em, k, js, hin, gam, refs)
                r, _ = em.ref(term)
                em.line(f"h{h.index} = h{h.index} + w{k} * {r}")
                em.close()
                continue
            em.open(f"if {self._any_active(uses)}:  # {'/'.join(u[0].name for u in uses)}: {o}, once")
            for leaf, r in zip(hin, refs):
                em.bind(leaf, r)
            r, _ = em.ref(term)
            for h, k, _ in uses:
                em.open(f"if tl.load(mask_ptr + {k}) != 0:")
                em.line(f"h{h.index} = h{h.index} + tl.load(w_ptr + {k}).to(tl.float32) * {r}")
                em.close()
            em.close()
        for h in members:
            em.bind(self.hout[h.index], f"h{h.index}")

    def _emit_slot_backward(self, em, o, use, hin, gam, parts, term, refs, ai) -> None:
        h, k, js = use
        j = h.index
        em.open(f"if tl.load(mask_ptr + {k}) != 0:  # {h.name}: {o}")
        self._bind_slot(em, k, js, hin, gam, refs)
        em.open("if WG:  # partial sums for the w/γ gradients (not in weight steps)")
        r = em.block(S("mul", _leaf(f"ah{j}"), term))
        em.line(f"tl.store(part_ptr + pid * NC + {k}, tl.sum(tl.where(m, {r}, 0.0), axis=0))")
        em.close()
        AW = _leaf(f"aw{k}")
        em.line(f"aw{k} = ah{j} * w{k}")
        em.bind(AW, f"aw{k}")
        for a, p in enumerate(parts[: len(hin)]):
            if not _is0(p):
                em.line(f"{ai[a]} = {ai[a]} + {em.block(S('mul', AW, p))}")
        for i, p in enumerate(parts[len(hin):]):
            if not _is0(p):
                em.open("if WG:")
                r = em.block(S("mul", AW, p))
                em.line(f"tl.store(part_ptr + pid * NC + {self.gcol_of[(k, i)]}, "
                        f"tl.sum(tl.where(m, {r}, 0.0), axis=0))  # d/dg[{js[i]}]")
                em.close()
        em.close()

    @staticmethod
    def _bind_slot(em, k, js, hin, gam, refs):
        em.line(f"w{k} = tl.load(w_ptr + {k}).to(tl.float32)")
        for leaf, r in zip(hin, refs):
            em.bind(leaf, r)
        for i, (leaf, j) in enumerate(zip(gam, js)):
            em.line(f"g{k}_{i} = tl.load(g_ptr + {j}).to(tl.float32)")
            em.bind(leaf, f"g{k}_{i}", False)

    def forward_body(self) -> str:
        em = _Emitter()
        em.bind(E.var(), "x")
        for members in self.groups():
            self.emit_group_forward(em, members, self.hole_refs(em, members[0]))
        y = em.block(self.T)
        return ("@triton.jit\n"
                "def grafs_cell_fwd(x_ptr, w_ptr, g_ptr, mask_ptr, y_ptr, n, BLOCK: tl.constexpr):\n"
                + _HEAD + "\n".join(em.lines) + "\n"
                + f"    tl.store(y_ptr + offs, {y}.to(y_ptr.dtype.element_ty), mask=m)\n")

    def backward_body(self) -> str:
        X, GY = E.var(), _leaf("gy")
        live_ids = [h.index for h in self.live]
        houts = [self.hout[j] for j in live_ids]
        dT = reverse(_rewrite_for_grad(self.T), [X] + houts)
        dI = {j: [reverse(_rewrite_for_grad(e), [X] + houts) for e in self.inputs[j]]
              for j in live_ids}
        # hole outputs the backward reads: inputs of live holes and the partials above
        used: set[int] = set()
        stack = [e for e in dT] + [e for j in live_ids for ds in dI[j] for e in ds] \
            + [e for j in live_ids for e in self.inputs[j]]
        while stack:
            e = stack.pop()
            for n in e.nodes():
                if n.op == _LEAF and n.name.startswith("h"):
                    j = int(n.name[1:])
                    if j not in used:
                        used.add(j)
                        stack.extend(self.inputs[j])
        em = _Emitter()
        em.bind(X, "x")
        em.bind(GY, "gy")
        refs: dict[int, list[str]] = {}
        groups = self.groups()
        for members in groups:        # recompute what the backward needs, in order
            r = self.hole_refs(em, members[0])
            for h in members:
                refs[h.index] = r
            if any(h.index in used for h in members):
                self.emit_group_forward(em, members, r)
        em.line("# backward")
        for j, d in zip(live_ids, dT[1:]):
            em.line(f"ah{j} = {em.block(S('mul', GY, d))}")
        em.line(f"ax = {em.block(S('mul', GY, dT[0]))}")
        # a group is processed where its first member falls in reverse order: every hole that
        # reads any member comes later in evaluation order, so all members' adjoints are final
        for members in reversed(groups):
            j = members[0].index
            for h in members:
                em.bind(_leaf(f"ah{h.index}"), f"ah{h.index}")
            n_in = len(self.inputs[j])
            ai = [f"ai{j}_{a}" for a in range(n_in)]
            for name in ai:
                em.line(f"{name} = tl.zeros([BLOCK], tl.float32)")
            for o, uses in self.shared_ops(members):
                _, hin, gam, parts, term = _cell_term(o, self.ell)
                if len(uses) == 1:
                    self._emit_slot_backward(em, o, uses[0], hin, gam, parts, term, refs[j], ai)
                    continue
                # the op once for all members that hold it: Σ_members ah·w times its partials
                em.open(f"if {self._any_active(uses)}:  # {'/'.join(u[0].name for u in uses)}: {o}, once")
                for leaf, r in zip(hin, refs[j]):
                    em.bind(leaf, r)
                rt = em.block(term)
                aws = em.fresh("aws")
                em.line(f"{aws} = tl.zeros([BLOCK], tl.float32)")
                for h, k, _ in uses:
                    em.open(f"if tl.load(mask_ptr + {k}) != 0:  # {h.name}")
                    em.line(f"{aws} = {aws} + ah{h.index} * tl.load(w_ptr + {k}).to(tl.float32)")
                    em.open("if WG:")
                    em.line(f"tl.store(part_ptr + pid * NC + {k}, "
                            f"tl.sum(tl.where(m, ah{h.index} * {rt}, 0.0), axis=0))")
                    em.close()
                    em.close()
                AW = _leaf(aws)
                em.bind(AW, aws)
                for a, p in enumerate(parts[: len(hin)]):
                    if not _is0(p):
                        em.line(f"{ai[a]} = {ai[a]} + {em.block(S('mul', AW, p))}")
                em.close()
            for a in range(n_in):   # through the group's (shared) input expression
                AI = _leaf(ai[a])
                em.bind(AI, ai[a])
                for leaf, d in zip([X] + houts, dI[j][a]):
                    if _is0(d):
                        continue
                    target = "ax" if leaf is X else f"a{leaf.name}"
                    em.line(f"{target} = {target} + {em.block(S('mul', AI, d))}")
        return ("@triton.jit\n"
                "def grafs_cell_bwd(x_ptr, w_ptr, g_ptr, mask_ptr, gy_ptr, gx_ptr, part_ptr, n,\n"
                "                   NC: tl.constexpr, WG: tl.constexpr, BLOCK: tl.constexpr):\n"
                + _HEAD + "    gy = tl.load(gy_ptr + offs, mask=m, other=0.0).to(tl.float32)\n"
                + "\n".join(em.lines) + "\n"
                + "    tl.store(gx_ptr + offs, ax.to(gx_ptr.dtype.element_ty), mask=m)\n")


def cell_source(space, slot_of, gamma_of, clip: bool, interp: bool = False) -> str:
    """Generated Triton source of the relaxed cell (forward and backward, all slots)."""
    plan = _CellPlan(space, slot_of, gamma_of, clip)
    text = f"relaxed {space.template} with {plan.K} slots, clip={clip}"
    return _module("relaxed cell", text, plan.forward_body() + "\n\n" + plan.backward_body(), interp)


# ---------------------------------------------------------------------------------------------
# running kernels
_LOCK = threading.Lock()
_COMPILED: dict[str, "_Compiled"] = {}     # source hash -> generated kernels (one per source)
_REG: dict[str, tuple] = {}                # op key -> (kernels, block size): what the ops run
_MODULES: dict[tuple[str, bool], object] = {}


def kernel_cache_size() -> int:
    """How many generated kernel files (formula or cell, per GPU/interpreter variant) this
    process has loaded."""
    return len(_MODULES)


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter (read now)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def _triton():
    try:
        import triton  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the install
        raise CompileError("the triton backend needs the 'triton' package (pip install "
                           "'grafs[triton]'); or use backend='inductor' or 'eager'") from err
    return triton


def _mode(x: torch.Tensor) -> bool:
    """True for the interpreter, False for a GPU; raises CompileError where neither can run."""
    _triton()
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise CompileError(f"the triton backend computes float32/float16/bfloat16 inputs, got "
                           f"{x.dtype}; use backend='eager' or 'inductor' for {x.dtype}")
    if interpreting():
        return True
    if x.device.type == "cpu":
        raise CompileError("the triton backend runs on a GPU; for tensors on the CPU set "
                           "TRITON_INTERPRET=1 (Triton's interpreter: slow, for testing), or use "
                           "backend='inductor' or 'eager'")
    if x.device.type not in ("cuda", "xpu"):
        raise CompileError(f"the triton backend does not run on device {x.device}; use "
                           f"backend='inductor' or 'eager' (or TRITON_INTERPRET=1)")
    if not _GPU_OK:
        _check_gpu_triton()
    return False


_GPU_OK: list = []     # non-empty once triton is known to compile GPU kernels in this process


def _check_gpu_triton() -> None:
    from triton.runtime.interpreter import InterpretedFunction
    import triton.language as tl
    if isinstance(getattr(tl.standard, "sum", None), InterpretedFunction):
        raise CompileError("triton was imported while TRITON_INTERPRET=1, so it cannot compile "
                           "GPU kernels in this process; unset TRITON_INTERPRET before starting "
                           "Python to run on the GPU")
    _GPU_OK.append(True)   # how triton was imported cannot change later in the process


class _Compiled:
    """Generated kernels of one formula or cell; the GPU and interpreter variants load lazily."""
    prefix = "grafs_triton"

    def __init__(self, make_source, names: tuple[str, ...]):
        self._make = make_source
        self.names = names
        self.source = make_source(False)
        self.key = hashlib.sha256(self.source.encode()).hexdigest()[:24]
        self._kernels: dict[bool, tuple] = {}

    def register(self, block: int | None) -> tuple["_Compiled", str]:
        """The shared instance for this source and the key the custom ops look it up by."""
        if block is not None and (int(block) < 16 or int(block) & (int(block) - 1)):
            raise CompileError(f"block must be a power of two >= 16, got {block}")
        with _LOCK:
            c = _COMPILED.setdefault(self.key, self)
            key = f"{c.key}/b{int(block or 0)}"
            _REG[key] = (c, block)
        return c, key

    def kernels(self, interp: bool) -> tuple:
        k = self._kernels.get(interp)
        if k is None:
            _triton()
            from triton.runtime.interpreter import InterpretedFunction
            from triton.runtime.jit import JITFunction
            with _LOCK:
                src = self.source if not interp else self._make(True)
                mod = load_source(src, prefix=self.prefix)
                _MODULES[(self.key, interp)] = mod
            out = []
            for name in self.names:
                obj = getattr(mod, name)
                fn = getattr(obj, "fn", obj)
                if interp and not isinstance(obj, InterpretedFunction):
                    obj = InterpretedFunction(fn)
                elif not interp and not isinstance(obj, JITFunction):
                    obj = JITFunction(fn)
                out.append(obj)
            k = self._kernels[interp] = tuple(out)
        return k

    @staticmethod
    def launch(kernel, interp: bool, grid, *args, **meta):
        if interp:
            import numpy as np
            with np.errstate(all="ignore"):
                kernel[grid](*args, **meta)
            return
        dev = args[0].device
        if dev.type == "cuda" and dev.index is not None and dev.index != torch.cuda.current_device():
            with torch.cuda.device(dev):
                kernel[grid](*args, **meta)
        else:
            kernel[grid](*args, **meta)


def _blocks(n: int, block: int) -> int:
    return max(1, (n + block - 1) // block)


def _meta(interp: bool, B: int, warps8_from: int, **extra) -> dict:
    """Launch parameters; num_warps only on a GPU (8 from ``warps8_from`` elements, else 4)."""
    meta = {**extra, "BLOCK": B}
    if not interp:
        meta["num_warps"] = 8 if B >= warps8_from else 4
    return meta


class _FormulaKernels(_Compiled):
    # GPU launch: 1024 elements per program, 8 warps (4 per thread; 28-80 registers for the
    # paper formulas on sm_90, no spills). Interpreter: 128 (each tl op runs in numpy).
    def __init__(self, prog: Program):
        self.n_params = len(prog.params)
        super().__init__(functools.partial(_formula_source, prog), ("grafs_fwd", "grafs_bwd"))

    @staticmethod
    def block(interp: bool, block: int | None) -> int:
        return block or (128 if interp else 1024)

    def forward(self, x: torch.Tensor, p: torch.Tensor, block=None) -> torch.Tensor:
        interp = _mode(x)
        xc = x.contiguous()
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        n = xc.numel()
        if n == 0:
            return y
        fwd, _ = self.kernels(interp)
        B = self.block(interp, block)
        self.launch(fwd, interp, (_blocks(n, B),), xc, p.contiguous(), y, n,
                    **_meta(interp, B, 1024))
        return y

    def backward(self, x, p, gy, block=None):
        interp = _mode(x)
        xc, gyc = x.contiguous(), gy.to(x.dtype).contiguous()
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        n = xc.numel()
        NP = max(self.n_params, 1)
        if n == 0:
            return gx, torch.zeros_like(p)
        _, bwd = self.kernels(interp)
        B = self.block(interp, block)
        grid = _blocks(n, B)
        part = torch.zeros((grid, NP), dtype=torch.float32, device=x.device)
        self.launch(bwd, interp, (grid,), xc, p.contiguous(), gyc, gx, part, n,
                    **_meta(interp, B, 1024, NP=NP))
        gp = part.sum(0)[: p.numel()] if self.n_params else torch.zeros_like(p, dtype=torch.float32)
        return gx, gp.to(p.dtype)


class _CellKernels(_Compiled):
    # GPU launch: 512 elements, 8 warps: the full 110-slot backward needs 128 registers per
    # thread on sm_90 without spills (228 with 4 warps).
    prefix = "grafs_triton_cell"

    def __init__(self, space, slot_of, gamma_of, clip: bool, active=None):
        self.plan = plan = _CellPlan(space, slot_of, gamma_of, clip, active)
        self.K = plan.K
        self.n_gamma = 1 + max((j for js in gamma_of.values() for j in js), default=-1)
        self.gcols = torch.tensor(plan.gcols, dtype=torch.long)
        n_code = sum(len(v) for v in plan.slots.values())
        text = f"relaxed {space.template} with {plan.K} slots ({n_code} compiled), clip={clip}"

        def make(interp: bool) -> str:
            return _module("relaxed cell", text, plan.forward_body() + "\n\n" + plan.backward_body(),
                           interp)
        super().__init__(make, ("grafs_cell_fwd", "grafs_cell_bwd"))

    @staticmethod
    def block(interp: bool, block: int | None) -> int:
        return block or (128 if interp else 512)

    def _check(self, x, w, g, mask):
        if w.numel() != self.K or mask.numel() != self.K:
            raise CompileError(f"the relaxed cell has {self.K} op slots; got {w.numel()} weights and "
                               f"a mask of {mask.numel()}")
        if g.numel() < self.n_gamma:
            raise CompileError(f"the relaxed cell uses {self.n_gamma} gammas; got {g.numel()}")

    def forward(self, x, w, g, mask, block=None):
        self._check(x, w, g, mask)
        interp = _mode(x)
        xc = x.contiguous()
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        n = xc.numel()
        if n == 0:
            return y
        fwd, _ = self.kernels(interp)
        B = self.block(interp, block)
        self.launch(fwd, interp, (_blocks(n, B),), xc, w.contiguous(), _gvec(g, x),
                    mask.to(device=x.device, dtype=torch.int8).contiguous(), y, n,
                    **_meta(interp, B, 512))
        return y

    def backward(self, x, w, g, mask, gy, block=None, need_wg: bool = True):
        """Gradients for x, w and g; with ``need_wg=False`` (a weight step: α and γ frozen) the
        kernel skips the per-op reductions and w/g get zeros."""
        interp = _mode(x)
        xc, gyc = x.contiguous(), gy.to(x.dtype).contiguous()
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        n = xc.numel()
        NC = self.K + len(self.plan.gcols)
        gg = torch.zeros(g.shape, dtype=torch.float32, device=g.device)
        if n == 0:
            return gx, torch.zeros_like(w), gg.to(g.dtype)
        _, bwd = self.kernels(interp)
        B = self.block(interp, block)
        grid = _blocks(n, B)
        part = torch.zeros((grid, max(NC, 1)) if need_wg else (1, 1), dtype=torch.float32,
                           device=x.device)
        self.launch(bwd, interp, (grid,), xc, w.contiguous(), _gvec(g, x),
                    mask.to(device=x.device, dtype=torch.int8).contiguous(), gyc, gx, part, n,
                    **_meta(interp, B, 512, NC=max(NC, 1), WG=bool(need_wg)))
        if not need_wg:
            return gx, torch.zeros_like(w), gg.to(g.dtype)
        sums = part.sum(0)
        gw = sums[: self.K].to(w.dtype).view(w.shape)
        if len(self.plan.gcols):
            gg.view(-1).index_add_(0, self._gcols_on(g.device), sums[self.K:NC].to(g.device))
        return gx, gw, gg.to(g.dtype)

    def _gcols_on(self, device):
        if self.gcols.device != device:
            self.gcols = self.gcols.to(device)
        return self.gcols


def _gvec(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if g.numel() == 0:   # Triton wants a real pointer
        return torch.zeros(1, dtype=torch.float32, device=x.device)
    return g.contiguous()


# -- torch.library custom ops: torch.compile traces through them ---------------------------------
@torch.library.custom_op("grafs_triton::formula_fwd", mutates_args=())
def _formula_fwd(x: torch.Tensor, p: torch.Tensor, key: str) -> torch.Tensor:
    c, block = _REG[key]
    return c.forward(x, p, block)


@_formula_fwd.register_fake
def _(x, p, key):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("grafs_triton::formula_bwd", mutates_args=())
def _formula_bwd(x: torch.Tensor, p: torch.Tensor, gy: torch.Tensor,
                 key: str) -> tuple[torch.Tensor, torch.Tensor]:
    c, block = _REG[key]
    return c.backward(x, p, gy, block)


@_formula_bwd.register_fake
def _(x, p, gy, key):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(p)


def _formula_setup(ctx, inputs, output):
    x, p, key = inputs
    ctx.save_for_backward(x, p)
    ctx.key = key


def _formula_backward(ctx, gy):
    x, p = ctx.saved_tensors
    gx, gp = _formula_bwd(x, p, gy, ctx.key)
    return gx, gp, None


_formula_fwd.register_autograd(_formula_backward, setup_context=_formula_setup)


@torch.library.custom_op("grafs_triton::cell_fwd", mutates_args=())
def _cell_fwd(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, mask: torch.Tensor,
              key: str) -> torch.Tensor:
    c, block = _REG[key]
    return c.forward(x, w, g, mask, block)


@_cell_fwd.register_fake
def _(x, w, g, mask, key):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("grafs_triton::cell_bwd", mutates_args=())
def _cell_bwd(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, mask: torch.Tensor,
              gy: torch.Tensor, key: str, need_wg: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c, block = _REG[key]
    return c.backward(x, w, g, mask, gy, block, need_wg)


@_cell_bwd.register_fake
def _(x, w, g, mask, gy, key, need_wg):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(w),
            torch.empty_like(g))


def _cell_setup(ctx, inputs, output):
    x, w, g, mask, key = inputs
    ctx.save_for_backward(x, w, g, mask)
    ctx.key = key


def _cell_backward(ctx, gy):
    x, w, g, mask = ctx.saved_tensors
    need_wg = bool(ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
    gx, gw, gg = _cell_bwd(x, w, g, mask, gy, ctx.key, need_wg)
    return gx, (gw if ctx.needs_input_grad[1] else None), (gg if ctx.needs_input_grad[2] else None), \
        None, None


_cell_fwd.register_autograd(_cell_backward, setup_context=_cell_setup)


# -- outside torch.compile: plain autograd Functions (a custom op's Python dispatch costs
# tens of microseconds per call, paid at every activation site) -------------------------------
class _FormulaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, kernels, block):
        ctx.save_for_backward(x, p)
        ctx.kernels, ctx.block = kernels, block
        return kernels.forward(x, p, block)

    @staticmethod
    def backward(ctx, gy):
        x, p = ctx.saved_tensors
        gx, gp = ctx.kernels.backward(x, p, gy, ctx.block)
        return gx, gp, None, None


class _CellFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, g, mask, kernels, block):
        ctx.save_for_backward(x, w, g, mask)
        ctx.kernels, ctx.block = kernels, block
        return kernels.forward(x, w, g, mask, block)

    @staticmethod
    def backward(ctx, gy):
        x, w, g, mask = ctx.saved_tensors
        nw, ng = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        gx, gw, gg = ctx.kernels.backward(x, w, g, mask, gy, ctx.block, nw or ng)
        return gx, (gw if nw else None), (gg if ng else None), None, None, None


# ---------------------------------------------------------------------------------------------
# public callables
class TritonFormula:
    """A formula's generated forward/backward Triton kernels as a differentiable callable.

    ``TritonFormula(program)(x, params) -> Tensor``: ``params`` maps parameter names to tensors
    (e.g. the Activation's ``nn.ParameterDict``); gradients flow to ``x`` and every parameter.
    """

    def __init__(self, program: Program, block: int | None = None):
        self.program = program
        self.param_names = tuple(n for n, _ in program.params)
        self._k, self.key = _FormulaKernels(program).register(block)
        self._block = block
        self.source = self._k.source      # the GPU variant (what `grafs compile --emit triton` prints)

    def kernels(self, interp: bool | None = None) -> tuple:
        """The (forward, backward) kernel objects for the interpreter or the GPU."""
        return self._k.kernels(interpreting() if interp is None else interp)

    def __call__(self, x: torch.Tensor, params=None) -> torch.Tensor:
        params = {} if params is None else params
        if self.param_names:
            p = torch.stack([params[n].reshape(()).to(device=x.device, dtype=torch.float32)
                             for n in self.param_names])
        else:
            p = torch.zeros(1, dtype=torch.float32, device=x.device)
        if torch.compiler.is_compiling():
            return _formula_fwd(x, p, self.key)
        return _FormulaFn.apply(x, p, self._k, self._block)

    def __repr__(self) -> str:
        return f"TritonFormula({self.program.text!r})"


class TritonCell:
    """The relaxed cell as one generated Triton kernel pair, for the full op set of ``space``.

    ``TritonCell(space, slot_of, gamma_of, clip)(x, w, g, mask) -> y``, differentiable w.r.t.
    ``x``, the mixture weights ``w`` (one per slot) and the γ vector ``g``. ``mask`` (one entry
    per slot, nonzero = active) selects the ops at run time, so shrinking the cell reuses the
    same kernels. ``slot_of``/``gamma_of`` as in :class:`grafs.runtime.cell.RelaxedCell`.
    """

    def __init__(self, space, slot_of, gamma_of, clip: bool, block: int | None = None,
                 active=None):
        self.space = space
        self.clip = bool(clip)
        self.active = active
        self._k, self.key = _CellKernels(space, dict(slot_of),
                                         {k: list(v) for k, v in gamma_of.items()},
                                         self.clip, active).register(block)
        self._block = block
        self.num_slots = self._k.K
        self.source = self._k.source

    def kernels(self, interp: bool | None = None) -> tuple:
        return self._k.kernels(interpreting() if interp is None else interp)

    def __call__(self, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        if g.numel() == 0:
            g = torch.zeros(0, dtype=torch.float32, device=x.device)
        # the small vectors follow x (a no-op when they are there already)
        w, g, mask = w.to(x.device), g.to(x.device), mask.to(x.device)
        if torch.compiler.is_compiling():
            return _cell_fwd(x, w, g, mask, self.key)
        return _CellFn.apply(x, w, g, mask, self._k, self._block)

    def __repr__(self) -> str:
        return f"TritonCell({self.space.template!r}, {self.num_slots} slots, clip={self.clip})"
