"""ONNX export of a formula, or of any model that contains grafs activations.

``export_onnx(formula_or_module, path)`` runs ``torch.onnx.export`` with the grafs modules
switched to their eager backend (the reference interpreter: plain aten ops, which both
exporters trace; Inductor- or Triton-compiled functions are not for exporters) and the model in
eval mode, both restored afterwards.

Exporters, measured with torch 2.13 and onnxscript 0.7 on a 2-core CPU (tests/test_onnx.py):

* ``dynamo=True`` (the default, torch's recommended exporter; needs onnxscript): every
  registry op and every trainable family exports and matches PyTorch under onnxruntime. A
  call costs about 2.5 s of CPU whatever the model (torch rebuilds its table of ONNX
  translations and runs its decompositions every time), plus tracing per op.
* ``dynamo=False`` (torch's legacy TorchScript exporter, deprecated since torch 2.9): about
  0.05 s per formula, but torch has no translation for ``aten::sinh``, ``cosh``, ``asinh`` and
  ``expm1`` (ELU with a learnable α); grafs adds those (ONNX Sinh, Cosh, Asinh, Exp − 1). It
  cannot export xIELU (``aten::to``).

An op with no ONNX translation raises :class:`grafs.CompileError` naming the aten op and the
grafs op it comes from.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from grafs.compiler import Activation
from grafs.errors import CompileError, GrafsError
from grafs.grammar import expr as E
from grafs.ops import OPS

# the exporters' ways of naming an op they cannot translate
_MISSING = (re.compile(r"Exporting the operator '(\w+)::(\w+)'"),          # TorchScript
            re.compile(r"Couldn't export operator (\w+)::(\w+)"),            # TorchScript
            re.compile(r"No ONNX function found for <OpOverload\(op='(\w+)\.(\w+)'"))  # dynamo
# trainable families the TorchScript exporter cannot export (dynamo=True can)
_LEGACY_UNSUPPORTED = {"xielu": "aten::to inside its autograd function"}
_LEGACY_SYMBOLICS_ADDED = False


def export_onnx(obj, path: str | os.PathLike, example: torch.Tensor | tuple | None = None, *,
                dynamo: bool = True, opset: int | None = None, **kwargs) -> Path:
    """Export a formula (string or Expr), a :class:`grafs.Activation`, or a model to ONNX.

    A formula or activation is exported with input ``x`` and output ``y``, every dimension
    dynamic; ``example`` (default ``torch.randn(2, 16)``) fixes only the rank. A model needs
    ``example`` (a tensor or a tuple of inputs) and exports with static shapes unless
    ``dynamic_shapes`` (dynamo) or ``dynamic_axes`` (legacy) is passed. ``kwargs`` go to
    ``torch.onnx.export``; the file is self-contained unless ``external_data=True`` is passed.
    Returns the path written.
    """
    standalone = not isinstance(obj, nn.Module) or isinstance(obj, Activation)
    if isinstance(obj, (str, E.Expr)):
        from grafs.compiler import compile as gcompile
        obj = gcompile(obj, backend="eager")
    elif not isinstance(obj, nn.Module):
        raise CompileError(f"export_onnx takes a formula, a grafs.Activation or an nn.Module, "
                           f"not {type(obj).__name__}")
    if example is None:
        if not standalone:
            raise CompileError("export_onnx of a model needs an example input: "
                               "export_onnx(model, path, example=torch.randn(...))")
        example = torch.randn(2, 16)
    args = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    opts: dict = {"verbose": False}
    if standalone:
        dims = range(args[0].dim())
        opts.update(input_names=["x"], output_names=["y"])
        if dynamo:
            opts["dynamic_shapes"] = ({d: torch.export.Dim.DYNAMIC for d in dims},)
        else:
            opts["dynamic_axes"] = {n: {d: f"d{d}" for d in dims} for n in ("x", "y")}
    if dynamo:
        opts["external_data"] = False
    else:
        _check_legacy(obj)
        _add_legacy_symbolics()
    if opset is not None:
        opts["opset_version"] = opset
    opts.update(kwargs)
    path = Path(path)
    if not path.parent.is_dir():      # (torch's error would read as the formulas' fault)
        raise GrafsError(f"cannot write the ONNX file {path}: the folder {path.parent} does not exist")
    with _exportable(obj), warnings.catch_warnings():
        # the TorchScript tracer warns about grafs' shape checks, constant for elementwise ops
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(obj, args, str(path), dynamo=dynamo, **opts)
        except ImportError as e:
            raise ImportError(f"ONNX export needs onnx and onnxscript ({e}); install them with "
                              f"`pip install grafs[onnx]`") from e
        except Exception as e:
            raise _explain(e, obj, dynamo) from e
    return path


@contextlib.contextmanager
def _exportable(module: nn.Module):
    """Eval mode and the eager backend for every grafs activation, restored afterwards."""
    acts = [m for m in module.modules() if isinstance(m, Activation)]
    backends = [a.backend for a in acts]
    training = [(m, m.training) for m in module.modules()]
    module.eval()
    for a in acts:
        a.backend = "eager"
    try:
        yield
    finally:
        for a, b in zip(acts, backends):
            a.backend = b
        for m, t in training:
            m.training = t


def _explain(err: Exception, module: nn.Module, dynamo: bool) -> CompileError:
    """A CompileError naming the op the exporter could not translate, and its grafs op."""
    text, e = "", err
    while e is not None and len(text) < 100_000:
        text += f"\n{e}"
        e = e.__cause__ or e.__context__
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for pat in _MISSING:
        m = pat.search(text)
        if m:
            ns, op = m.groups()
            culprits = [f"{name!r} in {a.formula!r}" for a in module.modules() if isinstance(a, Activation)
                        for name in _grafs_ops(a) if op in (name, _torch_name(name))]
            where = (f"; it comes from the grafs op {', '.join(dict.fromkeys(culprits))}"
                     if culprits else "")
            hint = "" if dynamo else " (dynamo=True, torch's default exporter, may translate it)"
            return CompileError(f"ONNX export failed: {ns}::{op} has no ONNX equivalent in "
                                f"torch's {'dynamo' if dynamo else 'TorchScript'} exporter"
                                f"{where}{hint}")
    formulas = [a.formula for a in module.modules() if isinstance(a, Activation)]
    return CompileError(f"ONNX export failed ({type(err).__name__}: {first})"
                        + (f"; grafs formulas in the model: {', '.join(map(repr, formulas))}" if formulas else ""))


def _check_legacy(module: nn.Module) -> None:
    for a in module.modules():
        if isinstance(a, Activation):
            for op in _grafs_ops(a):
                if op in _LEGACY_UNSUPPORTED:
                    raise CompileError(f"the grafs op {op!r} (in {a.formula!r}) has no ONNX equivalent in "
                                       f"torch's TorchScript exporter ({_LEGACY_UNSUPPORTED[op]}); "
                                       f"export with dynamo=True")


def _grafs_ops(act: Activation) -> list[str]:
    return list(dict.fromkeys(i.op for i in act.program.instrs))


def _torch_name(op: str) -> str | None:
    return getattr(OPS[op].torch, "__name__", None) if op in OPS else None


def _add_legacy_symbolics() -> None:
    """ONNX translations the TorchScript exporter lacks (ONNX has had these ops since opset 9)."""
    global _LEGACY_SYMBOLICS_ADDED
    if _LEGACY_SYMBOLICS_ADDED:
        return
    from torch.onnx import register_custom_op_symbolic as add

    for aten, onnx_op in (("sinh", "Sinh"), ("cosh", "Cosh"), ("asinh", "Asinh")):
        add(f"aten::{aten}", lambda g, x, _op=onnx_op: g.op(_op, x), 9)

    def expm1(g, x):  # exp(x) - 1, with the 1 in x's type (CastLike: opset 15)
        one = g.op("CastLike", g.op("Constant", value_t=torch.tensor(1.0)), x)
        return g.op("Sub", g.op("Exp", x), one)

    add("aten::expm1", expm1, 15)
    _LEGACY_SYMBOLICS_ADDED = True
