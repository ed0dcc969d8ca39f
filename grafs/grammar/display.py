"""A short form of a formula for people: constants folded, simplified, numbers rounded.

Discretized search results carry γ values with 17 significant digits and constant
sub-expressions such as ``sigmoid(asinh(0))``; the exact text stays the formula of record (it
parses back into the same function), and this is what a person reads. The display form
parses too, but its numbers are rounded, so it is close to, not equal to, the exact function.
"""
from __future__ import annotations

from grafs.grammar import expr as E
from grafs.grammar.simplify import apply_rules, simplify

DIGITS = 4


def round_numbers(root: E.Expr, digits: int = DIGITS) -> E.Expr:
    """Every constant (and parameter initial value) rounded to ``digits`` significant digits,
    then the trivial cases folded again (a γ of 0.99997 rounds to 1, and 1·x is x)."""
    def rounded(n: E.Expr, args: list[E.Expr]) -> E.Expr:
        if n.op in (E.CONST, E.PARAM):
            return E.Expr(n.op, (), float(f"{n.value:.{digits}g}"), n.name)
        return E.with_args(n, args)
    return apply_rules(E.rewrite(root, rounded))


def display_expr(e: E.Expr, digits: int = DIGITS) -> E.Expr:
    """Simplified (constant calls folded: ``sigmoid(asinh(0))`` is 0.5) and rounded."""
    return round_numbers(simplify(e), digits)


def display(formula, digits: int = DIGITS) -> str:
    """The display text of a formula (a string or an Expr); it parses with grafs.parse."""
    from grafs.grammar.parser import parse
    return str(display_expr(parse(formula), digits))
