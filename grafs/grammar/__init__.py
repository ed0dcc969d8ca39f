"""Activation-expression language: grammar, parser, Expr DAG, printers, sympy bridge."""
from grafs.grammar.expr import Expr, call, const, param, var
from grafs.grammar.parser import parse

__all__ = ["Expr", "parse", "call", "const", "param", "var"]
