"""Compile activation expressions to torch modules.

Backends: ``eager`` (interpret the lowered program with torch ops: the reference),
``inductor`` (Inductor kernels of that program, the default; grafs.compiler.inductor_formula)
and ``triton`` (grafs' own generated Triton kernels, see grafs.compiler.triton.backend).
``python`` export is :func:`to_python`.
"""
from __future__ import annotations

import torch
from torch import nn

from grafs.compiler.eager import run_program
from grafs.compiler.lower import DEFAULT_ELL, Program, clip_expr, lower
from grafs.compiler.python_export import to_python
from grafs.errors import CompileError
from grafs.grammar import expr as E

BACKENDS = ("eager", "inductor", "triton")


class ParamStore(nn.Module):
    """Learnable scalars by name, in order of appearance in the formula.

    Stored as ``p_<name>`` attributes, so any identifier works as a name (``keys``, ``training``,
    ``forward`` would clash with nn.ParameterDict/nn.Module attributes).
    """

    def __init__(self, items):
        super().__init__()
        self._names: list[str] = []
        for name, value in items:
            self._names.append(name)
            self.register_parameter(f"p_{name}", nn.Parameter(torch.tensor(value, dtype=torch.float32)))

    def __getitem__(self, name: str) -> nn.Parameter:
        if name not in self._names:
            raise KeyError(name)
        return getattr(self, f"p_{name}")

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def keys(self):
        return list(self._names)

    def values(self):
        return [self[n] for n in self._names]

    def items(self):
        return [(n, self[n]) for n in self._names]


class Activation(nn.Module):
    """An activation function compiled from a formula.

    ``formula`` is the canonical text; learnable scalars are ``nn.Parameter`` s in
    ``self.params`` (keyed by name). Under the inductor backend the program is compiled once per
    dtype and device, for every shape (grafs.compiler.inductor_formula: called without Dynamo,
    no guards per call); parameter updates never recompile. Inside the user's ``torch.compile``
    every backend traces the formula's plain torch expression, so Inductor fuses it with the
    neighbouring layers.
    """

    def __init__(self, expr: E.Expr, backend: str = "inductor", clip: bool = False,
                 ell: float = DEFAULT_ELL):
        super().__init__()
        if backend not in BACKENDS:
            raise CompileError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} "
                               f"(use grafs.to_python for Python source)")
        self.expr = expr
        self.backend = backend
        self.clip = clip
        self.ell = float(ell)
        self.program: Program = lower(expr, clip=clip, ell=ell)
        self.params = ParamStore(self.program.params)
        from grafs.ops import OPS
        # trainable families (xielu(…), anact(…), …): one module per node, state in state_dict
        self.terms = nn.ModuleDict([(i.key, OPS[i.op].module()) for i in self.program.instrs
                                    if i.key is not None])  # pairs: ModuleDict keeps their order
        self._compiled = None
        self._triton = None
        self._fn = None
        self._build()

    def _build(self) -> None:
        """The generated torch function (inductor and triton backends), built here and not at
        the first call: that call may be inside the user's torch.compile, which must not trace
        file writes and imports."""
        if self.backend != "eager":
            from grafs.compiler.codegen import function_source, load_source
            self._fn = load_source(function_source(self.program)).grafs_fn

    @property
    def formula(self) -> str:
        return str(self.expr)

    def extra_repr(self) -> str:
        return f"{self.formula!r}, backend={self.backend!r}" + (f", clip=±{self.ell:g}" if self.clip else "")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return run_program(self.program, x, self.params, modules=self.terms)

    def _args(self) -> list:
        """The generated function's arguments after x: parameters by appearance, then modules."""
        return [*[self.params[n] for n, _ in self.program.params],
                *[self.terms[i.key] for i in self.program.instrs if i.key is not None]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_floating_point() or x.is_complex()):
            # integer inputs were truncated back to integers (eager) or silently wrong (inductor)
            raise CompileError(f"an activation takes floating-point tensors, got {x.dtype}; "
                               f"convert the input with x.float()")
        if self.backend == "eager":
            return self._run(x)
        if self.backend == "triton" and len(self.terms):
            raise CompileError("the triton backend does not run trainable families "
                               f"({', '.join(self.terms)}); use backend='inductor'")
        if self._fn is None:         # an Activation whose backend was switched after construction
            self._build()
        if torch.compiler.is_compiling():
            # inside the user's torch.compile: the plain torch expression, which Dynamo traces
            # like any other ops and Inductor fuses with the neighbouring layers
            return self._fn(x, *self._args())
        if self.backend == "inductor":
            if self._compiled is None:
                from grafs.compiler.inductor_formula import InductorFormula
                # trainable families keep state in modules: torch.compile traces them per call
                self._compiled = InductorFormula(self._fn, len(self.program.params),
                                                 fallback=bool(len(self.terms)))
            return self._compiled(x, self._args())
        if self._triton is None:
            from grafs.compiler.triton.backend import TritonFormula
            self._triton = TritonFormula(self.program)
        return self._triton(x, self.params)

    def __getstate__(self):  # compiled callables don't pickle/deepcopy; rebuild lazily
        state = self.__dict__.copy()
        state["_compiled"] = None
        state["_triton"] = None
        state["_fn"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._build()


def compile(expr, backend: str = "inductor", *, clip: bool = False,
            ell: float = DEFAULT_ELL) -> Activation:
    """Compile a formula (string or Expr) to an ``nn.Module``.

    ``clip=True`` bounds the unbounded ops to ±``ell`` the way the search does (registry
    ``Op.clip`` rules); by default formulas run unclipped, as the reference evaluates them.
    """
    from grafs.grammar.parser import parse
    return Activation(parse(expr), backend=backend, clip=clip, ell=ell)


__all__ = ["Activation", "compile", "to_python", "lower", "clip_expr", "BACKENDS"]
