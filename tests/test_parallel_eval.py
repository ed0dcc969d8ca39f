"""``grafs evaluate --jobs N``: the runs in worker processes give the sequential table; failed
runs are reported and the others kept; ``--out`` caches finished runs and a re-run skips them."""
import json

import pytest
import torch
from torch import nn

import grafs.tasks
from grafs.cli import main
from grafs.errors import GrafsError
from grafs.protocol.evaluate import evaluate
from grafs.tasks import SearchConfig, Task, TrainConfig

FORMULAS = ["0.5*relu(x) + 0.5*gelu(x)", "log(x)"]   # log(x): NaN at the first step, fails


@pytest.fixture
def tiny_digits(monkeypatch):
    """The built-in digits task, narrowed (width 4) and cut to 3 steps per epoch; the CLI gets
    it in place of the full task."""
    task = grafs.tasks.get_task("digits", width=4, eval_max_steps_per_epoch=3)
    monkeypatch.setattr(grafs.tasks, "get_task", lambda name, **kw: task)
    return task


def cli(capsys, tmp_path, jobs):
    out = tmp_path / f"jobs{jobs}"
    code = main(["evaluate", "--task", "digits", "--activations", *FORMULAS, "--baselines", "ReLU",
                 "--seeds", "2", "--epochs", "2", "--quiet", "--jobs", str(jobs), "--out", str(out),
                 "--json", str(out) + ".json"])
    text = capsys.readouterr().out
    return code, text, json.loads((tmp_path / f"jobs{jobs}.json").read_text())


def test_jobs_2_gives_the_sequential_table_and_a_rerun_skips_finished_runs(tiny_digits, tmp_path,
                                                                          capsys, monkeypatch):
    code1, text1, t1 = cli(capsys, tmp_path, 1)
    code2, text2, t2 = cli(capsys, tmp_path, 2)
    assert code1 == code2 == 1                       # some runs failed
    assert text1 == text2 and "| F2 | failed |" in text1
    assert [r["scores"] for r in t1["rows"]] == [r["scores"] for r in t2["rows"]]
    assert [len(r["scores"]) for r in t1["rows"]] == [2, 0, 2]
    assert [(f["name"], f["seed"]) for f in t2["failures"]] == [("F2", 0), ("F2", 1)]
    assert all("non-finite training loss" in f["error"] for f in t2["failures"])
    assert len(list((tmp_path / "jobs1" / "runs").glob("*.json"))) == 4   # failures not cached

    # a re-run trains only what failed, and reads the rest back
    fits = []
    fit = Task.fit
    monkeypatch.setattr(Task, "fit", lambda self, model, *a, **kw: fits.append(1) or fit(self, model, *a, **kw))
    code3, text3, t3 = cli(capsys, tmp_path, 1)
    assert len(fits) == 2 and text3 == text1 and t3["rows"] == t1["rows"]


def _builder(act):
    return nn.Sequential(nn.Linear(4, 4), act(), nn.Linear(4, 2))


def test_jobs_needs_a_picklable_task_and_a_positive_count():
    x = torch.randn(16, 4)
    y = (x[:, 0] > 0).long()
    task = Task("local", "a lambda model builder", x, y, x, y, lambda act: _builder(act), nn.ReLU,
                (nn.ReLU,), SearchConfig(epochs=2, shrink_start_epoch=1), TrainConfig(epochs=1))
    with pytest.raises(GrafsError, match="cannot be pickled.*jobs=1"):
        evaluate(task, baselines=["ReLU", "GELU"], seeds=1, jobs=2, progress=False)
    with pytest.raises(GrafsError, match="jobs must be an int >= 1"):
        evaluate(task, baselines=["ReLU"], seeds=1, jobs=0, progress=False)


def test_the_run_cache_ignores_search_settings_but_not_training_ones():
    """An evaluation run depends on the data, the model and the training settings: a search
    override (or a new search setting in a later grafs) keeps the cached runs valid."""
    from grafs.protocol.runs import RunSpec, run_key
    spec = RunSpec(0, "F1", "relu(x)", 0)
    cpu = torch.device("cpu")

    def key(**overrides):
        task = grafs.tasks.get_task("digits", **{"width": 4, **overrides})
        return run_key(task, spec, task.eval_config, "eager", cpu, None)
    base = key()
    assert key(arch_lr=0.1, arch_steps=2, shrink_start_epoch=5) == base  # search settings
    assert key(eval_epochs=3) != base and key(width=8) != base           # training, model
    assert run_key(grafs.tasks.get_task("digits", width=4), RunSpec(5, "other name", "relu(x)", 0),
                   grafs.tasks.get_task("digits", width=4).eval_config, "eager", cpu, None) == base
