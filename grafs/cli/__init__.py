"""The ``grafs`` command line."""
from __future__ import annotations

import argparse
import sys
import warnings

from grafs.errors import GrafsError


def _cmd_show(args) -> int:
    from grafs.grammar.parser import parse
    e = parse(args.expr)
    rows = [("canonical", str(e)), ("simplified", str(e.simplify())), ("latex", e.latex())]
    try:
        d = e.derivative()
        rows += [("derivative", str(d)),
                 ("derivative (simplified)", str(d.simplify()) if d.depth < 30 else str(d))]
    except GrafsError as err:     # a trainable family (xielu, pwlu, ...): autograd only
        rows.append(("derivative", f"none symbolic ({err}); autograd differentiates it"))
    if e.params():
        rows.append(("parameters", ", ".join(f"{k}={v!r}" for k, v in e.params().items())))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0


def _cmd_compile(args) -> int:
    from grafs.grammar.parser import parse
    e = parse(args.expr)
    if args.emit == "python":
        from grafs.compiler.python_export import to_python
        print(to_python(e, class_name=args.name, clip=args.clip), end="")
    else:
        from grafs.compiler.triton.backend import triton_source
        print(triton_source(e, clip=args.clip), end="")
    return 0


def _cmd_plot(args) -> int:
    from grafs.plot import plot_activations
    path = plot_activations(args.expr, args.output, baselines=args.baseline, lo=args.lo, hi=args.hi)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grafs", description="Activation-function formulas, "
                                "compiled to PyTorch, and GRAFS activation search.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("show", help="canonical, simplified and LaTeX forms and the derivative")
    s.add_argument("expr", help="a formula in x, e.g. '0.47 LeakyReLU(x) + 0.53 GELU(x)'")
    s.set_defaults(fn=_cmd_show)

    c = sub.add_parser("compile", help="emit standalone source for a formula")
    c.add_argument("expr")
    c.add_argument("--emit", choices=("python", "triton"), default="python")
    c.add_argument("--name", default="Activation", help="class name of the emitted module")
    c.add_argument("--clip", action="store_true", help="clip unbounded ops to ±10 as the search does")
    c.set_defaults(fn=_cmd_compile)

    pl = sub.add_parser("plot", help="plot formulas and their derivatives to a PNG")
    pl.add_argument("expr", nargs="+")
    pl.add_argument("-o", "--output", default="activation.png")
    pl.add_argument("--baseline", action="append", default=[], help="extra formula drawn dashed")
    pl.add_argument("--lo", type=float, default=-5.0)
    pl.add_argument("--hi", type=float, default=5.0)
    pl.set_defaults(fn=_cmd_plot)

    # (a broken import here must fail loudly, not remove the search commands)
    from grafs.cli.search_commands import add_search_commands
    add_search_commands(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    show = warnings.showwarning
    warnings.showwarning = _grafs_warnings_as_lines(show)
    try:
        return args.fn(args)
    except GrafsError as err:
        print(f"grafs: error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = show


def _grafs_warnings_as_lines(show):
    """grafs' own warnings as ``grafs: warning: ...`` lines (on the command line the source
    line a warning is attributed to is the console script's, which tells the user nothing);
    other warnings as ``show`` prints them."""
    from grafs.errors import GrafsWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, GrafsWarning):
            print(f"grafs: warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
