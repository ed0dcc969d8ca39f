"""Triton source emission: straight-line kernel statements from Expr DAGs, and the formula
kernels.

For a formula, :func:`formula_source` generates one forward and one backward kernel from the
lowered :class:`~grafs.compiler.lower.Program`:

* the forward loads ``x`` (fp32/fp16/bf16), computes in fp32 with the registry's Triton templates
  (``Op.triton``) and stores in the input's dtype;
* the backward recomputes from ``x`` and evaluates the gradient taken symbolically in reverse
  mode (grafs.compiler.reverse). Gradients of learnable parameters are reductions: each program
  writes ``tl.sum`` of its block to an fp32 buffer of partial sums, reduced by a second small
  ``sum`` (deterministic, no atomics); the sums mask the padding lanes of the last block.

Templates use ``expm1``/``log1p`` and overflow-free softplus/logsigmoid. Generated sources
contain only registry templates, generated names and ``repr`` of numbers. The relaxed cell's
kernels are emitted by grafs.compiler.triton_cell_emit with the same :class:`Emitter`.
"""
from __future__ import annotations

from grafs.compiler.lower import DEFAULT_ELL, Program, lower
from grafs.compiler.reverse import (EXPM1, LEAF, SELECT, S, is_zero, leaf, program_expr, reverse,
                                    rewrite_for_grad)
from grafs.compiler.triton_interp import prelude
from grafs.errors import CompileError
from grafs.grammar import expr as E
from grafs.ops import OPS

__all__ = ["Emitter", "HEAD", "check_templates", "module_source", "formula_source",
           "triton_source"]

# Triton templates of the reverse mode's internal ops
_INTERNAL = {SELECT: "tl.where({0} > 0, {1}, {2})", EXPM1: "libdevice.expm1({0})"}


def _lit(v: float) -> str:
    r = repr(float(v))
    return f"({r})" if r.startswith("-") else r


class Emitter:
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
                    if node.op == LEAF and node.name == "F":     # a constant as a block
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


def check_templates(*roots: E.Expr) -> None:
    """Raise the CompileError naming the first op without a Triton template."""
    for r in roots:
        for n in E.topological(r):
            if n.args:
                _template(n.op)



HEAD = """\
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
"""


def module_source(kind: str, text: str, body: str, interp: bool) -> str:
    safe = " ".join(text.split())
    return (f"# generated by grafs ({kind}, Triton{' interpreter' if interp else ''}) from: {safe}\n"
            + prelude(interp) + "\n\n" + body)


# -- formula kernels ---------------------------------------------------------------------------
def _formula_body(prog: Program) -> str:
    root = program_expr(prog)
    X, GY = E.var(), leaf("gy")
    names = [n for n, _ in prog.params]
    check_templates(root)
    groot = rewrite_for_grad(root)
    by_name = {n.name: n for n in groot.nodes() if n.op == E.PARAM}
    pleaves = [by_name.get(nm, E.param(nm, v)) for nm, v in prog.params]
    adj = reverse(groot, [X] + pleaves)
    gx = S("mul", GY, adj[0])
    gps = [S("mul", GY, d) for d in adj[1:]]
    check_templates(gx, *gps)

    loads = [f"    p{i} = tl.load(p_ptr + {i}).to(tl.float32)  # {{{nm}}}\n"
             for i, nm in enumerate(names)]
    fwd = Emitter()
    fwd.bind(X, "x")
    for i, nm in enumerate(names):
        fwd.bind(E.param(nm, dict(prog.params)[nm]), f"p{i}", False)
    y = fwd.block(root)
    out = ["@triton.jit",
           "def grafs_fwd(x_ptr, p_ptr, y_ptr, n, BLOCK: tl.constexpr):",
           HEAD + "".join(loads) + "\n".join(fwd.lines) + ("\n" if fwd.lines else "")
           + f"    tl.store(y_ptr + offs, {y}.to(y_ptr.dtype.element_ty), mask=m)\n"]

    bwd = Emitter()
    bwd.bind(X, "x")
    bwd.bind(GY, "gy")
    for i, pl in enumerate(pleaves):
        bwd.bind(pl, f"p{i}", False)
    gxr = bwd.block(gx)
    stores = [f"    tl.store(gx_ptr + offs, {gxr}.to(gx_ptr.dtype.element_ty), mask=m)"]
    for i, g in enumerate(gps):
        if not is_zero(g):
            r = bwd.block(g)
            stores.append(f"    tl.store(gp_ptr + pid * NP + {i}, "
                          f"tl.sum(tl.where(m, {r}, 0.0), axis=0))  # d/d{{{names[i]}}}")
    out += ["",
            "@triton.jit",
            "def grafs_bwd(x_ptr, p_ptr, gy_ptr, gx_ptr, gp_ptr, n, NP: tl.constexpr,"
            " BLOCK: tl.constexpr):",
            HEAD + "    gy = tl.load(gy_ptr + offs, mask=m, other=0.0).to(tl.float32)\n"
            + "".join(loads) + "\n".join(bwd.lines + stores) + "\n"]
    return "\n".join(out)


def formula_source(prog: Program, interp: bool) -> str:
    return module_source("formula forward and backward", prog.text, _formula_body(prog), interp)


def triton_source(expr, clip: bool = False, ell: float = DEFAULT_ELL) -> str:
    """The generated Triton source (forward and backward kernels) of a formula, as the GPU runs
    it (``grafs compile EXPR --emit triton``). Needs no triton install."""
    from grafs.grammar.parser import parse
    return formula_source(lower(parse(expr), clip=clip, ell=ell), interp=False)
