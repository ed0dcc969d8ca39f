"""Export a model that uses a found activation to ONNX, and run it with onnxruntime.

    pip install "grafs[onnx]"
    python examples/export_onnx.py                      # a formula from the GRAFS paper
    python examples/export_onnx.py --result runs/cnn    # a result saved by a search

grafs.export_onnx(model, path, example) runs torch.onnx.export (the dynamo exporter) with the
grafs activations on their eager backend and the model in eval mode. A formula alone exports
with grafs.export_onnx("0.5*x*sigmoid(x)", "act.onnx") (input x, output y, every dimension
dynamic).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import grafs

PAPER_GPT = "(0.4662 sinh(x) + 0.5338) GELU(x)"   # F_GPT^3 of the GRAFS paper


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formula", default=PAPER_GPT)
    p.add_argument("--result", help="a directory written by grafs.SearchResult.save")
    p.add_argument("--out", help="where to write model.onnx (default: a temporary directory)")
    args = p.parse_args(argv)
    formula = grafs.SearchResult.load(args.result).formula if args.result else args.formula

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), grafs.compile(formula), nn.LayerNorm(64),
                          nn.Linear(64, 64), grafs.compile(formula), nn.Linear(64, 4))
    batch = torch.export.Dim("batch", min=1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(args.out or d) / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        grafs.export_onnx(model, path, torch.randn(8, 16), dynamic_shapes=({0: batch},),
                          input_names=["x"], output_names=["logits"])
        print(f"wrote {path} ({path.stat().st_size} bytes)")

        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.randn(5, 16)                       # another batch size: the batch is dynamic
        (got,) = session.run(None, {"x": x.numpy()})
    for m in model:                                  # the reference, without an Inductor compile
        if isinstance(m, grafs.Activation):
            m.backend = "eager"
    with torch.no_grad():
        want = model.eval()(x).numpy()
    err = float(abs(got - want).max() / max(1.0, abs(want).max()))   # relative to the outputs
    print(f"onnxruntime vs PyTorch: max difference {err:.2e} (relative to max |output|)")
    return err


if __name__ == "__main__":
    main()
