"""The scripts in examples/ run, at tiny sizes (their --tiny flag), so they cannot rot.

The search example runs once; its saved result feeds the transformers and timm examples, as
the examples' own instructions do (--result DIR).
"""
import importlib.util
import json
import math
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

import grafs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")  # tiny searches


def load(name: str):
    """Import examples/<name>.py as a module (its folder on sys.path, as when run as a script)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"grafs_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    result = load("search_own_model").main(["--tiny", "--out", str(out)])
    return out, result


def test_search_own_model_saves_a_result_that_loads(found):
    out, result = found
    assert grafs.SearchResult.load(out).formula == result.formula
    assert str(grafs.parse(result.formula)) == result.formula
    x = torch.linspace(-3, 3, 25)
    assert torch.isfinite(grafs.compile(result.formula, backend="eager")(x)).all()


def test_search_own_model_with_restarts(capsys):
    result = load("search_own_model").main(["--tiny", "--restarts", "2", "--epochs", "3"])
    table = result.history["restarts"]
    assert [t["seed"] for t in table] == [0, 1000] and result.settings["restarts"] == 2
    chosen = next(t["formula"] for t in table if t["chosen"])
    # the chosen restart's formula, unless the check or the verdict gave back the ReLU
    replaced = result.history.get("unusable_formula") or result.history.get("rejected_formula")
    assert result.formula == chosen or (replaced == chosen and result.formula == "relu(x)")
    out = capsys.readouterr().out
    assert "seed  1000" in out and "from scratch" in out and ("against your relu(x)" in out or "kept your relu(x)" in out)


def test_transformers_example_trains_with_the_found_activation(found):
    pytest.importorskip("transformers", reason="needs the hf extra: pip install grafs[hf]")
    loss = load("transformers_config").main(["--tiny", "--result", str(found[0])])
    assert math.isfinite(loss)
    assert "grafs_found" not in grafs.registered()       # the example cleans up after itself


def test_timm_example_trains_with_the_found_activation(found):
    try:
        import timm  # noqa: F401
    except Exception as e:  # not installed, or its torchvision does not load beside this torch
        pytest.skip(f"needs the timm extra (pip install grafs[timm]); timm does not import here: "
                    f"{type(e).__name__}")
    loss = load("timm_model").main(["--tiny", "--result", str(found[0])])
    assert math.isfinite(loss)


def test_export_onnx_example_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install grafs[onnx]")
    pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install grafs[onnx]")
    err = load("export_onnx").main(["--out", str(tmp_path)])
    assert err < 1e-5 and (tmp_path / "model.onnx").is_file()


def _rank(rank: int, port: int, out: str) -> None:
    # what torchrun sets for each process
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = load("distributed_search").main(["--tiny", "--device", "cpu", "--out", f"{out}/result"])
    Path(out, f"rank{rank}.json").write_text(json.dumps(result.formula))


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with the gloo backend")
def test_distributed_example_ranks_agree_and_rank0_saves(tmp_path):
    import multiprocessing
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    torch.multiprocessing.start_processes(_rank, args=(port, str(tmp_path)), nprocs=2, join=True,
                                          start_method=method)
    formulas = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert formulas[0] == formulas[1]
    assert grafs.SearchResult.load(tmp_path / "result").formula == formulas[0]
