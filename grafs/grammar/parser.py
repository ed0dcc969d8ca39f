"""Text -> Expr: the lark LALR parser plus an iterative tree-to-DAG conversion.

Errors are :class:`grafs.ParseError` with line, column and a caret under the problem. Nothing
here evaluates the input: numbers go through ``float()`` and names through the registry.
"""
from __future__ import annotations

import functools
import math
from importlib import resources

import lark

from grafs.errors import ArityError, ParseError, UnknownFunctionError
from grafs.grammar import expr as E
from grafs.ops import get_op, lookup, suggest

MAX_LENGTH = 10_000   # characters; activation formulas are short, this guards memory/time
MAX_DEPTH = 200       # nesting levels; keeps sympy (recursive) and printing safe

CONSTANTS = {"pi": math.pi, "π": math.pi}

_READABLE = {
    "NUMBER": "a number", "NAME": "a name", "LPAR": "'('", "RPAR": "')'", "COMMA": "','",
    "_PLUS": "'+'", "_MINUS": "'-'", "_TIMES": "'*'", "_DIVIDE": "'/'", "_POW": "'^'",
    "LBRACE": "'{'", "RBRACE": "'}'", "EQUAL": "'='", "$END": "the end of the input",
}


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    text = resources.files("grafs.grammar").joinpath("activation.lark").read_text("utf-8")
    return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _expected(tokens) -> str:
    names = sorted({_READABLE.get(t, t) for t in tokens})
    operand = {"a number", "a name", "'('", "'{'"}
    if operand <= set(names):
        names = [n for n in names if n not in operand] + ["a number, x, a function call or '('"]
    return ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1] if names else "?"


def parse_tree(text: str):
    """Validate and parse ``text`` to a lark tree (raises ParseError)."""
    return _parse_tree(text)


def parse(text: str) -> E.Expr:
    """Parse an activation expression in ``x`` into an :class:`~grafs.Expr`.

    >>> str(parse("0.4756 ReLU(x) + 0.5244 GELU(x)"))
    '0.4756*relu(x) + 0.5244*gelu(x)'
    """
    if isinstance(text, E.Expr):
        return text
    return convert(_parse_tree(text), text)


def _parse_tree(text: str):
    if not isinstance(text, str):
        raise ParseError(f"expected an expression string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ParseError(f"input is {len(text)} characters long; the limit is {MAX_LENGTH}",
                         text, *_line_col(text, MAX_LENGTH))
    if not text.strip():
        raise ParseError("empty expression: write a formula in x, e.g. '0.5*gelu(x) + 0.5*relu(x)'",
                         text or " ", 1, 1)
    _check_nesting(text)
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedCharacters as err:
        ch = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        raise ParseError(f"unexpected character {ch!r}", text, err.line, err.column) from None
    except lark.exceptions.UnexpectedToken as err:
        tok = err.token
        if tok.type == "$END":
            line, col = _line_col(text, len(text.rstrip()))  # just past the last character
            raise ParseError(f"unexpected end of input; expected {_expected(err.expected)}",
                             text, line, col) from None
        raise ParseError(f"unexpected {tok.value!r}; expected {_expected(err.expected)}",
                         text, tok.line, tok.column) from None
    except lark.exceptions.UnexpectedEOF as err:  # pragma: no cover - LALR reports UnexpectedToken
        line, col = _line_col(text, len(text))
        raise ParseError(f"unexpected end of input; expected {_expected(err.expected)}",
                         text, line, col) from None
    return tree


def _line_col(text: str, pos: int) -> tuple[int, int]:
    pos = min(pos, len(text))
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _check_nesting(text: str) -> None:
    """Reject absurd nesting before parsing (the parse tree would be as deep)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "({":
            depth += 1
            if depth > MAX_DEPTH:
                raise ParseError(f"expression nested more than {MAX_DEPTH} levels deep",
                                 text, *_line_col(text, i))
        elif ch in ")}":
            depth -= 1


def _pos(node, text) -> tuple[int, int]:
    if isinstance(node, lark.Token):
        return node.line or 1, node.column or 1
    meta = getattr(node, "meta", None)
    if meta is not None and not meta.empty:
        return meta.line, meta.column
    return 1, 1


def convert(tree, text: str, hook=None) -> E.Expr:
    """Post-order walk with an explicit stack (deep chains like ----x must not recurse)."""
    params: dict[str, float] = {}
    # names given explicitly anywhere ({p0=0.5} after an unnamed {0.5}): never auto-names
    explicit = {n.children[0].value for n in tree.iter_subtrees()
                if n.data == "param" and n.children and n.children[0] is not None}
    auto = [0, explicit]
    done: dict[int, E.Expr] = {}
    stack: list[tuple[object, bool]] = [(tree, False)]
    while stack:
        node, ready = stack.pop()
        if isinstance(node, lark.Tree) and not ready and node.data not in ("param",):
            stack.append((node, True))
            for ch in reversed(node.children):
                if isinstance(ch, lark.Tree):
                    stack.append((ch, False))
            continue
        kids = [done.get(id(c)) if isinstance(c, lark.Tree) else c
                for c in getattr(node, "children", [])]
        built = hook(node, kids) if hook is not None else None
        done[id(node)] = built if built is not None else _build(node, kids, text, params, auto)
        if done[id(node)].depth > MAX_DEPTH:
            raise ParseError(f"expression nested more than {MAX_DEPTH} levels deep",
                             text, *_pos(node, text))
    return done[id(tree)]


def _number(tok: lark.Token, text: str) -> float:
    v = float(tok.value)
    if not math.isfinite(v):
        raise ParseError(f"number {tok.value} is not finite in float64", text, tok.line, tok.column)
    return v


def _build(node, kids, text, params, auto) -> E.Expr:
    kind = node.data
    if kind == "number":
        return E.const(_number(kids[0], text))
    if kind == "name":
        tok = kids[0]
        if tok.value == "x":
            return E.var()
        if tok.value.lower() in CONSTANTS:
            return E.const(CONSTANTS[tok.value.lower()])
        hint = (" (it is a function: call it like " + tok.value + "(x))" if lookup(tok.value)
                else suggest(tok.value))      # a misspelt function name: the close ones
        raise ParseError(f"unknown variable {tok.value!r}: the only variable is x{hint}",
                         text, tok.line, tok.column)
    if kind == "param":
        name_tok, signed = node.children
        value = _number(signed.children[0], text) * (-1.0 if signed.data == "neg_number" else 1.0)
        if name_tok is None:
            while f"p{auto[0]}" in params or f"p{auto[0]}" in auto[1]:
                auto[0] += 1
            name = f"p{auto[0]}"
            auto[0] += 1
        else:
            name = name_tok.value
            if name == "x" or name.lower() in CONSTANTS:
                raise ParseError(f"a learnable parameter cannot be named {name!r} (that is the "
                                 f"{'input variable' if name == 'x' else 'constant ' + name}); "
                                 f"pick another name", text, name_tok.line, name_tok.column)
            if name in params and params[name] != value:
                raise ParseError(f"parameter {name!r} is given two initial values "
                                 f"({params[name]!r} and {value!r})", text, name_tok.line,
                                 name_tok.column)
        params[name] = value
        return E.param(name, value)
    if kind == "neg":
        (a,) = kids
        if a.is_const:  # "-0.5" is the number -0.5 (keeps printing idempotent)
            return E.const(-a.value)
        return E.call("neg", a)
    if kind == "pos":
        return kids[0]
    if kind in ("add", "sub", "mul", "div", "pow"):
        return E.Expr(kind, kids)
    if kind == "call":
        tok, *args = kids
        args = [a for a in args if a is not None]
        name = tok.value
        if name == "x" or name.lower() in CONSTANTS:  # "x (x + 1)" is juxtaposition
            left = E.var() if name == "x" else E.const(CONSTANTS[name.lower()])
            if len(args) != 1:
                raise ParseError(f"{name} is not a function", text, tok.line, tok.column)
            return E.Expr("mul", [left, args[0]])
        op = lookup(name)
        if op is None:
            raise UnknownFunctionError(f"unknown function {name!r}{suggest(name)}",
                                       text, tok.line, tok.column)
        if not op.arity <= len(args) <= op.arity + len(op.scalars):
            raise ArityError(f"{op.name} takes {op.arity_text()}; got {len(args)}",
                             text, tok.line, tok.column)
        for s, a in zip(op.scalars, args[op.arity:]):
            if a.depends_on_x():
                raise ParseError(f"the {s.name} of {op.name} must be a number or a learnable "
                                 f"{{param}}, not an expression of x", text, tok.line, tok.column)
        return E.call(op.name, *args)
    raise ParseError(f"unsupported syntax {kind!r}", text, *_pos(node, text))  # pragma: no cover
