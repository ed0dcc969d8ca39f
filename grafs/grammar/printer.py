"""Canonical text and LaTeX for Expr.

The text form uses canonical lowercase op names, ``*`` for products, ``^`` for powers, numbers
printed with ``repr`` (shortest string that round-trips exactly) and ``{name=init}`` for
learnable parameters, so ``parse(str(e))`` is the same DAG again. Scalars equal to an op's
default (e.g. the 0.01 slope of leaky_relu) are left out.
"""
from __future__ import annotations

from grafs.grammar import expr as E
from grafs.ops import OPS

# binding strength: higher binds tighter
_PREC = {"add": 1, "sub": 1, "mul": 2, "div": 2, "neg": 3, "pow": 4}
_ATOM = 5


def _num(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v)) if v != 0 or str(v)[0] != "-" else "-0.0"
    return repr(v)


def to_text(root: E.Expr) -> str:
    """Iterative so that deep expressions print without recursion."""
    return E.rewrite(root, _fmt)[0]


def _wrap(s: tuple[str, int], prec: int, strict: bool = False) -> str:
    text, p = s
    return f"({text})" if (p < prec or (strict and p == prec)) else text


def _fmt(n: E.Expr, args: list[tuple[str, int]]) -> tuple[str, int]:
    if n.op == E.VAR:
        return "x", _ATOM
    if n.op == E.CONST:
        return _num(n.value), (3 if n.value < 0 or str(n.value).startswith("-") else _ATOM)
    if n.op == E.PARAM:
        return f"{{{n.name}={_num(n.value)}}}", _ATOM
    if n.op in ("wref", "gref"):  # relaxed-cell internals (not part of the grammar)
        return f"{n.op[0]}[{int(n.value)}]", _ATOM
    if n.op == "hole":            # search-space template holes print as U(...) / B(..., ...)
        return f"{n.name[0]}({', '.join(s for s, _ in args)})", _ATOM
    op = OPS[n.op]
    if n.op in ("add", "sub"):
        # a + (b + c) must keep its parentheses: it reparses left-nested otherwise (floats!)
        return f"{_wrap(args[0], 1)} {op.infix} {_wrap(args[1], 1, strict=True)}", 1
    if n.op in ("mul", "div"):
        return f"{_wrap(args[0], 2)}{op.infix}{_wrap(args[1], 3 if n.op == 'mul' else 3)}", 2
    if n.op == "neg":  # -(-1.5), -(-x): "--" would reparse as a different node
        return f"-{_wrap(args[0], 3, strict=True)}", 3
    if n.op == "pow":  # right-associative; the base must be an atom
        return f"{_wrap(args[0], _ATOM)}^{_wrap(args[1], 3)}", 4
    if op.module is not None and len(n.args) > op.arity:  # an expanded family node (cell)
        return f"{n.op}({grammar_arg(n, args)[0]})", _ATOM
    shown = list(args[: op.arity])
    scal = n.args[op.arity:]
    # drop trailing scalars equal to their defaults
    keep = len(scal)
    while keep and scal[keep - 1].is_const and scal[keep - 1].value == op.scalars[keep - 1].default:
        keep -= 1
    shown += args[op.arity: op.arity + keep]
    return f"{n.op}({', '.join(s for s, _ in shown)})", _ATOM


def grammar_arg(n: E.Expr, args: list):
    """The wrapped expression of an expanded family node (its module inputs also hold x and,
    for anact, the derivative): the first input that is not x itself."""
    for a, s in zip(n.args, args):
        if a.op != E.VAR:
            return s
    return args[0]


def to_latex(root: E.Expr) -> str:
    import sympy as sp
    from grafs.grammar.sympy_bridge import to_sympy
    return sp.latex(to_sympy(root))
