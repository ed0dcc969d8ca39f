"""The grafs command line, run in-process through grafs.cli.main."""
import importlib.util
import json
import math

import pytest
import torch

import grafs
from grafs.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_show(capsys):
    code, out, _ = run(capsys, "show", "0.4739 LeakyReLU(LeakyReLU(x)) + 0.5261 GELU(x)")
    assert code == 0
    assert "0.4739*leaky_relu(leaky_relu(x)) + 0.5261*gelu(x)" in out
    assert "leaky_relu(x, 0.0001)" in out        # simplified
    assert "\\operatorname{GELU}" in out          # LaTeX
    assert "derivative" in out


def test_show_a_trainable_family_formula(capsys):
    """`grafs show "xielu(x)"` exited 2 (no symbolic derivative); the README says show lists
    what grafs makes of any formula: the other rows, and why there is no derivative row."""
    code, out, _ = run(capsys, "show", "xielu(x)")
    assert code == 0 and "canonical   xielu(x)" in out and "derivative  none symbolic" in out


def test_show_bad_input_exits_2_with_caret(capsys):
    code, _, err = run(capsys, "show", "0.5*gelo(x)")
    assert code == 2
    assert "did you mean 'gelu'" in err and "^" in err


def test_compile_emit_python_is_importable_and_correct(capsys, tmp_path):
    formula = "(0.4662 sinh(x) + 0.5338) GELU(x) + {a=0.1}*x"
    code, out, _ = run(capsys, "compile", formula, "--emit", "python", "--name", "Found")
    assert code == 0 and "import grafs" not in out
    path = tmp_path / "found.py"
    path.write_text(out)
    spec = importlib.util.spec_from_file_location("found", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = torch.randn(100, dtype=torch.float64)
    torch.testing.assert_close(mod.Found().double()(x), grafs.compile(formula, backend="eager").double()(x))


def test_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "f.png"
    code, msg, _ = run(capsys, "plot", "0.4756 ReLU(x) + 0.5244 GELU(x)", "--baseline", "gelu(x)", "-o", str(out))
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_plot_paths_that_cannot_be_written_are_clear_errors(tmp_path, capsys):
    """A missing folder or a suffix matplotlib cannot write was a raw traceback (exit 1), for
    `grafs evaluate --plot` only after the whole evaluation had run."""
    pytest.importorskip("matplotlib")
    code, _, err = run(capsys, "plot", "gelu(x)", "-o", str(tmp_path / "no" / "g.png"))
    assert code == 2 and "the folder" in err and "does not exist" in err
    code, _, err = run(capsys, "plot", "gelu(x)", "-o", str(tmp_path / "g.txt"))
    assert code == 2 and "not an image format" in err
    code, _, err = run(capsys, "evaluate", "--task", "digits", "--activations", "relu(x)",
                       "--seeds", "1", "--epochs", "1", "--quiet", "--plot", str(tmp_path / "no" / "p.png"))
    assert code == 2 and "does not exist" in err


def test_evaluate_json_is_strict_json(tmp_path, capsys):
    """One seed has no SEM: the table's JSON wrote NaN, which is not JSON (JSON.parse fails)."""
    js = tmp_path / "t.json"
    code, _, _ = run(capsys, "evaluate", "--task", "digits", "--activations", "relu(x)",
                     "--baselines", "ReLU", "--seeds", "1", "--epochs", "1", "--quiet", "--json", str(js))

    def refuse(name):
        raise ValueError(f"{name} in the JSON")
    rows = json.loads(js.read_text(), parse_constant=refuse)["rows"]
    assert code == 0 and rows[0]["sem"] is None and rows[0]["mean"] is not None


def test_search_without_resume_keeps_an_unfinished_search(tmp_path, capsys):
    """--out holding an interrupted search's checkpoint: a run without --resume overwrote it
    after its first epoch; now it says to pass --resume (a finished search is run again)."""
    import torch
    from grafs.searching.checkpoint import Interrupted
    from grafs.searching.loop import search
    out = tmp_path / "run"
    x = torch.randn(64, 4)
    with pytest.raises(Interrupted):
        search(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
               (x, (x[:, 0] > 0).long()), epochs=3, checkpoint_dir=out, progress=False,
               _stop_after_epoch=0)
    before = (out / "checkpoint.pt").read_bytes()
    code, _, err = run(capsys, "search", "--task", "teacher", "--epochs", "3", "--out", str(out), "--quiet")
    assert code == 2 and "holds an unfinished search (1 of its 3 epochs done): pass --resume" in err
    assert (out / "checkpoint.pt").read_bytes() == before


def test_search_and_evaluate_commands(tmp_path, capsys):
    out = tmp_path / "run"
    code, msg, _ = run(capsys, "search", "--task", "digits", "--epochs", "2", "--out", str(out), "--quiet")
    assert code == 0
    res = grafs.SearchResult.load(out)
    lines = msg.splitlines()
    at = lines.index(f"use this activation: {res.display}")     # the one to use comes first
    assert lines[at + 1] == f"  exact formula:     {res.formula}"
    if res.history.get("unscaled_formula", res.formula) != res.formula:
        assert lines[at + 2] == "variants:" and "without the op-normalisation constants" in lines[at + 3]
    grafs.parse(res.formula)
    js = tmp_path / "table.json"
    code, msg, _ = run(capsys, "evaluate", "--task", "digits", "--results", str(out), "--baselines", "ReLU",
                       "--seeds", "2", "--epochs", "1", "--quiet", "--json", str(js))
    assert code == 0 and "| ReLU |" in msg and "search time / evaluation time" in msg
    table = json.loads(js.read_text())
    assert [r["name"] for r in table["rows"]] == ["F1", "ReLU"]
    row = table["rows"][1]
    mean = sum(row["scores"]) / 2
    sem = math.sqrt(sum((s - mean) ** 2 for s in row["scores"]) / 1) / math.sqrt(2)
    assert math.isclose(row["mean"], mean) and math.isclose(row["sem"], sem)
    assert math.isclose(table["search_seconds"], res.search_seconds)
    code, msg, _ = run(capsys, "evaluate", "--task", "digits", "--activations", "relu(x)",
                       "--baselines", "ReLU", "--scaled-baselines", "--seeds", "1", "--epochs", "1",
                       "--quiet", "--json", str(js))
    names = [r["name"] for r in json.loads(js.read_text())["rows"]]
    assert code == 0 and names[:2] == ["F1", "1.412·ReLU"] and names[-1] == "ReLU" and len(names) == 7


def test_set_overrides_task_options_and_configs(tmp_path, capsys):
    """--set KEY=VALUE reaches the task's search config (recorded in the result's settings),
    values parse as JSON, and a bad key or form is a clear error naming what is accepted."""
    from grafs.errors import GrafsError
    from grafs.tasks.base import parse_overrides
    assert parse_overrides(["epochs=3", "single_level=true", "teacher=tanh(x)", "betas=[0.5, 0.9]",
                            "arch_lr=1e-2"]) == {"epochs": 3, "single_level": True,
                                                 "teacher": "tanh(x)", "betas": [0.5, 0.9],
                                                 "arch_lr": 0.01}
    for bad in ("epochs", "=3", "two words=1"):
        with pytest.raises(GrafsError, match="KEY=VALUE"):
            parse_overrides([bad])
    out = tmp_path / "run"
    code, msg, _ = run(capsys, "search", "--task", "teacher", "--set", "epochs=3", "single_level=true",
                       "arch_lr=0.01", "num_train=512", "--out", str(out), "--quiet")
    res = grafs.SearchResult.load(out)
    assert code == 0 and res.settings["single_level"] is True and res.settings["epochs"] == 3
    assert res.settings["arch_lr"] == 0.01
    code, _, err = run(capsys, "search", "--task", "teacher", "--set", "bogus=1", "--quiet")
    assert code == 2 and "unknown option(s) ['bogus']" in err and "single_level" in err


def test_set_seed_is_a_clear_error(capsys):
    code, _, err = run(capsys, "search", "--task", "teacher", "--set", "seed=3", "--quiet")
    assert code == 2 and "--seed" in err
    code, _, err = run(capsys, "search", "--task", "teacher", "--epochs", "2", "--set", "epochs=3",
                       "--quiet")
    assert code == 2 and "conflicts with --epochs" in err


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
def test_search_restarts_flag_prints_every_restart_and_saves_the_pick(tmp_path, capsys):
    out = tmp_path / "run"
    code, msg, _ = run(capsys, "search", "--task", "teacher", "--restarts", "2", "--set", "epochs=3",
                       "num_train=256", "width=8", "--out", str(out), "--quiet")
    # the teacher task picks by training each restart's formula from scratch
    assert code == 0 and ("2 restarts (kept: the lowest validation loss of its formula trained "
                          "from scratch at the end)") in msg
    res = grafs.SearchResult.load(out)
    table = res.history["restarts"]
    assert [t["seed"] for t in table] == [0, 1000] and sum(t["chosen"] for t in table) == 1
    assert res.formula == next(t["formula"] for t in table if t["chosen"])
    assert (out / "restart-0" / "checkpoint.pt").exists() and (out / "restart-1" / "checkpoint.pt").exists()
    for line in (f"seed {t['seed']:>5}  val {t['val_loss']:.4f}  from scratch {t['score']:.4f}"
                 for t in table):
        assert line in msg
    code, msg, _ = run(capsys, "search", "--task", "teacher", "--restarts", "2", "--set", "epochs=3",
                       "num_train=256", "width=8", "restart_select=val_loss", "--quiet",
                       "--out", str(tmp_path / "val"))
    assert code == 0 and "2 restarts (kept: the lowest validation loss at the end)" in msg
    assert "from scratch" not in msg
    code, msg, _ = run(capsys, "search", "--task", "teacher", "--restarts", "2", "--set", "epochs=4",
                       "num_train=256", "width=8", "restart_pick_epoch=2", "--quiet",
                       "--out", str(tmp_path / "race"))
    assert code == 0 and "after epoch 3, the only one run on" in msg
    code, _, err = run(capsys, "search", "--task", "teacher", "--restarts", "2", "--set", "restarts=3",
                       "--quiet")
    assert code == 2 and "conflicts with --restarts" in err
    code, _, err = run(capsys, "search", "--task", "teacher", "--restarts", "0", "--quiet")
    assert code == 2 and "restarts must be an int >= 1" in err


def test_grafs_warnings_print_as_lines_without_the_console_scripts_source(capsys):
    """On the command line a GrafsWarning is one 'grafs: warning: ...' line; others go to the
    usual printer; main puts the printer back when it returns."""
    import warnings

    from grafs.cli import _grafs_warnings_as_lines
    from grafs.errors import GrafsWarning
    seen = []
    show = _grafs_warnings_as_lines(lambda *a: seen.append(a))
    show(GrafsWarning("the found formula is affine"), GrafsWarning, "/venv/bin/grafs", 6)
    show(UserWarning("other"), UserWarning, "x.py", 1)
    assert capsys.readouterr().err == "grafs: warning: the found formula is affine\n"
    assert [a[1] for a in seen] == [UserWarning]
    before = warnings.showwarning
    assert main(["show", "relu(x)"]) == 0 and warnings.showwarning is before
