"""ONNX export (grafs.export_onnx): the exported graphs run under onnxruntime and match PyTorch.

The 15 paper formulas are compared with their hand-written torch references; every registry
op and trainable family with the grafs module itself (tested elsewhere against sympy). The
dynamo exporter costs seconds per call (torch rebuilds its translation table, and tracing
costs per op), so its check exports one model holding the paper's formulas, the ops the
legacy exporter lacks and the families; the legacy exporter is fast and is checked op by op.
"""
import copy
import numpy as np
import pytest
import sympy as sp
import torch
from torch import nn

import grafs
from grafs import ops
from grafs.integrations.onnx import export_onnx
from grafs.testing.paper_formulas import PAPER_FORMULAS

ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install grafs[onnx]")
pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install grafs[onnx]")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter's

# another shape than the export's example: every dimension of a formula's graph is dynamic
X = torch.linspace(-5, 5, 3 * 7 * 11).reshape(3, 7, 11)
EXAMPLE = torch.randn(2, 3, 4)
TOL = dict(atol=1e-5, rtol=1e-5)

UNARY = [f"{n}(x)" for n in ops.function_names() if ops.OPS[n].module is None and ops.OPS[n].arity == 1]
OTHERS = ["max(x, 0.5*x)", "min(x, sin(x))", "x^3 - x/3", "x^{p=2.0} + {a=0.5}*x",
          "leaky_relu(x, {s=0.2})", "elu(x, {al=0.7})", "clamp(x, {lo=-0.5}, 2)", "1.5"]
LEGACY_GAPS = ["sinh(x)", "cosh(x)", "asinh(x)", "elu(x, {al=0.7})"]
FAMILIES = ["xielu(x)", "xiprelu(x)", "pwlu(x)", "dyn(gelu(x))", "anact(silu(x))"]


def run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def close(got: np.ndarray, want: torch.Tensor) -> None:
    np.testing.assert_allclose(got, want.detach().numpy(), equal_nan=True, **TOL)


def exact(ref, x: torch.Tensor) -> torch.Tensor:
    """A hand-written reference in float64: in float32, GELU's far tail (x = -5: 1 + erf(x/√2)
    cancels to ~6e-7) differs by 25 % between torch's kernels on different CPUs, and
    (0.4662 sinh(x) + 0.5338)·GELU(x) multiplies that by -34, past the tolerance."""
    return ref(x.double())


class Bank(nn.Module):
    """Many activations side by side: one export for all of them."""

    def __init__(self, formulas):
        super().__init__()
        self.acts = nn.ModuleList(grafs.compile(f, backend="eager") for f in formulas)

    def forward(self, x):
        return torch.stack([a(x) for a in self.acts])


def test_dynamo_export_of_paper_formulas_and_families_matches_torch(tmp_path):
    # the paper's formulas, the ops torch's legacy exporter lacks, and every trainable family
    refs = [ref for _, ref in PAPER_FORMULAS.values()]
    formulas = [f for f, _ in PAPER_FORMULAS.values()] + LEGACY_GAPS + FAMILIES
    bank = Bank(formulas).eval()
    got = run(export_onnx(bank, tmp_path / "bank.onnx", X), X)
    for i, ref in enumerate(refs):                        # the 15 paper formulas, by hand
        close(got[i], exact(ref, X))
    with torch.no_grad():       # in float64, for the reason of exact()
        want = copy.deepcopy(bank).double()(X.double())
    for i, f in enumerate(formulas):
        np.testing.assert_allclose(got[i], want[i].numpy(), equal_nan=True, err_msg=f, **TOL)


@pytest.mark.parametrize("name", list(PAPER_FORMULAS))
def test_legacy_export_of_each_paper_formula_matches_its_reference(tmp_path, name):
    formula, ref = PAPER_FORMULAS[name]
    path = export_onnx(formula, tmp_path / "f.onnx", EXAMPLE, dynamo=False)
    close(run(path, X), exact(ref, X))


@pytest.mark.parametrize("formula", UNARY + OTHERS + FAMILIES[1:])
def test_legacy_export_of_each_op_matches_the_module(tmp_path, formula):
    # sinh, cosh, asinh and expm1 (elu with a learnable alpha) need grafs' own translations
    act = grafs.compile(formula, backend="eager").eval()
    path = export_onnx(act, tmp_path / "f.onnx", EXAMPLE, dynamo=False)
    with torch.no_grad():
        close(run(path, X), act(X))


def test_formula_export_has_named_dynamic_io(tmp_path):
    import onnx
    path = export_onnx("gelu(x)", tmp_path / "f.onnx", dynamo=False)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["y"]
    shape = model.graph.input[0].type.tensor_type.shape.dim
    assert len(shape) == 2 and all(d.dim_param for d in shape)


def test_an_output_folder_that_does_not_exist_is_named(tmp_path):
    """The export's FileNotFoundError was reported as a problem with the model's formulas."""
    from grafs.errors import GrafsError
    with pytest.raises(GrafsError, match="the folder .*missing does not exist"):
        export_onnx("gelu(x)", tmp_path / "missing" / "f.onnx", dynamo=False)


def test_an_op_without_onnx_equivalent_is_named(tmp_path, monkeypatch):
    # a registry op (as a user could add one) that torch has no ONNX translation for
    lgamma = ops.Op("lgamma", 1, torch.lgamma, sp.loggamma, None, "torch.lgamma({0})")
    monkeypatch.setitem(ops.OPS, "lgamma", lgamma)
    monkeypatch.setitem(ops.registry._LOOKUP, "lgamma", "lgamma")
    with pytest.raises(grafs.CompileError, match=r"aten::lgamma has no ONNX equivalent.*"
                                                 r"grafs op 'lgamma' in '1\.5\*lgamma\(x\)'"):
        export_onnx("1.5*lgamma(x)", tmp_path / "f.onnx", dynamo=False)


def test_legacy_exporter_refuses_xielu_by_name(tmp_path):
    with pytest.raises(grafs.CompileError, match="'xielu'.*dynamo=True"):
        export_onnx("gelu(x) + xielu(x)", tmp_path / "f.onnx", dynamo=False)


def test_a_model_needs_an_example_input(tmp_path):
    with pytest.raises(grafs.CompileError, match="example"):
        export_onnx(nn.Sequential(nn.Linear(2, 2)), tmp_path / "m.onnx")
    with pytest.raises(grafs.CompileError, match="formula, a grafs.Activation or an nn.Module"):
        export_onnx(3, tmp_path / "m.onnx")


def test_model_export_uses_eager_and_eval_then_restores_them(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), grafs.compile("{a=1.0}*x*sigmoid(x)"),
                          nn.Dropout(0.5), nn.Linear(8, 3)).train()
    assert model[1].backend == "inductor"
    with torch.no_grad():
        model[1].params["a"].fill_(0.75)
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(5, 4), dynamo=False)
    assert model[1].backend == "inductor" and model.training and model[2].training
    x = torch.randn(5, 4)
    model[1].backend = "eager"     # the same formula without an Inductor compile
    with torch.no_grad():
        want = model.eval()(x)     # eval: the export has no dropout
    close(run(path, x), want)
