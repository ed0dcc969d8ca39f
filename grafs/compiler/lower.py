"""Lowering: Expr -> a straight-line Program (topological order, each shared node once).

Before lowering, optional bounded-op clipping inserts ``clamp``/``min`` nodes as each op's
registry rule says, and sub-expressions that depend on neither x nor a learnable parameter
are folded to constants (evaluated in float64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grafs.errors import CompileError
from grafs.grammar import expr as E
from grafs.grammar.constants import const_value
from grafs.ops import OPS

DEFAULT_ELL = 10.0
# Compiled formulas run in float32 (and Triton always computes in it): a constant beyond its
# range would be inf there, or make torch raise ("value cannot be converted to type float
# without overflow", e.g. clamp(x, 1e39)), so such constants are rejected at compile time.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)

# An argument: ("x",) the input; ("t", i) result of instruction i; ("c", v) a constant;
# ("p", name) a learnable parameter; ("F", v) the constant v as a tensor shaped like x (a
# constant where a tensor is needed: a module input, or the tensor argument of an op whose
# other arguments are learnable scalars); ("w", k) / ("g", k) element k of the relaxed cell's
# mixture-weight / gamma vectors (see grafs.compiler.cell.lower).
Arg = tuple


@dataclass(frozen=True)
class Instr:
    op: str
    args: tuple[Arg, ...]
    key: str | None = None    # module ops: name of the submodule that computes this node


@dataclass(frozen=True)
class Program:
    instrs: tuple[Instr, ...]
    result: Arg
    params: tuple[tuple[str, float], ...]   # (name, init) in order of appearance
    text: str                                # the formula the program computes

    def __len__(self) -> int:
        return len(self.instrs)


def clip_expr(root: E.Expr, ell: float = DEFAULT_ELL) -> E.Expr:
    """Apply each op's bounded-op clipping rule (registry ``Op.clip``) with bound ``ell``."""
    def clip(n: E.Expr, args: list[E.Expr]) -> E.Expr:
        new = E.with_args(n, args)
        op = OPS.get(n.op)
        if op is None or op.clip is None or not new.depends_on_x():
            return new
        clipped = op.clip(list(new.args), ell)
        if clipped is None:   # the rule clips the output
            return E.call("clamp", new, -ell, ell)
        return E.Expr(new.op, clipped)
    return E.rewrite(root, clip)


VECTOR_REFS = {"wref": "w", "gref": "g"}


def _const_value(n: E.Expr, vals: list[float]) -> float | None:
    """The float64 value of ``n`` over the constant arguments ``vals`` (None for a trainable
    family); a CompileError when it is not finite or beyond float32's range."""
    v = const_value(n.op, vals)
    if v is None:
        return None
    if not math.isfinite(v):
        raise CompileError(f"the constant sub-expression {n} evaluates to {v}")
    _check_range(v, lambda: f"the constant sub-expression {n} = {v:.4g}")
    return v


def _check_range(v: float, what) -> None:
    if abs(v) > FLOAT32_MAX:
        raise CompileError(f"{what()} is beyond float32's range (±3.4e38); compiled formulas "
                           f"compute in float32")


def expand_modules(root: E.Expr) -> E.Expr:
    """Give each module-op node (trainable family) the inputs its module is called with."""
    def expand(n: E.Expr, args: list[E.Expr]) -> E.Expr:
        op = OPS.get(n.op)
        if op is None or op.module is None or len(args) != op.arity:
            return E.with_args(n, args)
        shallow = E.Expr(n.op, args, n.value, n.name)
        return E.Expr(n.op, [expand_modules(a) for a in op.module_inputs(shallow)], n.value, n.name)
    return E.rewrite(root, expand)


def fold_constants(root: E.Expr, strict: bool = True) -> E.Expr:
    """Replace sub-expressions of constants by their float64 value.

    ``strict``: a constant that is not finite or beyond float32's range is a CompileError (the
    compiler's use); otherwise it is left unfolded (display and discretized formulas)."""
    def fold(n: E.Expr, args: list[E.Expr]) -> E.Expr:
        if strict and n.op in (E.CONST, E.PARAM):
            what = "number" if n.op == E.CONST else "initial value"
            _check_range(n.value, lambda: f"the {what} {n}")
        if args and all(a.is_const for a in args):
            try:
                v = _const_value(n, [a.value for a in args])
            except CompileError:
                if strict:
                    raise
            else:
                if v is not None:
                    return E.const(v)
        return E.with_args(n, args)
    return E.rewrite(root, fold)


def lower(root: E.Expr, clip: bool = False, ell: float = DEFAULT_ELL,
          text: str | None = None) -> Program:
    e = clip_expr(root, ell) if clip else root
    e = fold_constants(expand_modules(e))
    slots: dict[int, Arg] = {}
    instrs: list[Instr] = []
    for n in E.topological(e):
        if n.op == E.VAR:
            slots[id(n)] = ("x",)
        elif n.op == E.CONST:
            slots[id(n)] = ("c", n.value)
        elif n.op == E.PARAM:
            slots[id(n)] = ("p", n.name)
        elif n.op in VECTOR_REFS:
            slots[id(n)] = (VECTOR_REFS[n.op], int(n.value))
        else:
            key = None
            op = OPS[n.op]
            args = [slots[id(a)] for a in n.args]
            if op.module is not None:
                key = n.name or f"{n.op}{len(instrs)}"
                args = [("F", a[1]) if a[0] == "c" else a for a in args]
            elif op.infix is None and all(a[0] == "c" for a in args[: op.arity]):
                args = [("F", a[1]) if (a[0] == "c" and i < op.arity) else a for i, a in enumerate(args)]
            instrs.append(Instr(n.op, tuple(args), key))
            slots[id(n)] = ("t", len(instrs) - 1)
    return Program(tuple(instrs), slots[id(e)], tuple(root.params().items()),
                   str(root) if text is None else text)
