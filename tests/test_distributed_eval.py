"""``torchrun --nproc-per-node 2 -m grafs evaluate``: the evaluation runs spread over 2 gloo
ranks (forked here with torchrun's environment), each run on one rank; rank 0 prints and
writes the table, which equals the single-process one; a run that fails on a rank is a
failure in the table, not a hang; --out caches the runs of every rank."""
import contextlib
import io
import json
import os

import pytest
import torch

import grafs.protocol.runs
import grafs.tasks
from grafs.cli import main
from grafs.testing.ranks import start_ranks

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")

FORMULAS = ["0.5*relu(x) + 0.5*gelu(x)", "log(x)"]   # log(x): NaN at the first step, fails


def cli(out, json_path, extra=()):
    return main(["evaluate", "--task", "digits", "--activations", *FORMULAS, "--baselines", "ReLU",
                 "--seeds", "2", "--epochs", "2", "--quiet", "--out", str(out), "--json",
                 str(json_path), *extra])


def _rank(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ran = []
    run_one = grafs.protocol.runs.run_one
    grafs.protocol.runs.run_one = lambda task, spec, *a: ran.append(spec.index) or run_one(task, spec, *a)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli(os.path.join(tmp, "out"), os.path.join(tmp, f"table{rank}.json"))
        ran_first = list(ran)
        again = cli(os.path.join(tmp, "out"), os.path.join(tmp, f"again{rank}.json"))
    with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
        json.dump({"code": code, "again": again, "ran": ran_first, "ran_again": ran[len(ran_first):],
                   "stdout": stdout.getvalue()}, f)


@pytest.fixture
def tiny_digits(monkeypatch):
    task = grafs.tasks.get_task("digits", width=4, eval_max_steps_per_epoch=3)
    monkeypatch.setattr(grafs.tasks, "get_task", lambda name, **kw: task)
    return task


def test_two_ranks_share_the_runs_and_give_the_single_process_table(tiny_digits, tmp_path, capsys):
    assert cli(tmp_path / "single", tmp_path / "single.json") == 1      # some runs fail
    single_text = capsys.readouterr().out
    start_ranks(_rank, 2, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # every run on one rank: rank r trains every 2nd run
    assert sorted(r0["ran"] + r1["ran"]) == list(range(6))
    assert r0["ran"] == [0, 2, 4] and r1["ran"] == [1, 3, 5]
    # rank 0 prints and writes the table, which is the single-process one
    assert not (tmp_path / "table1.json").exists() and r1["stdout"] == ""
    assert r0["stdout"] == single_text * 2          # the run, then the re-run below
    dist_table = json.loads((tmp_path / "table0.json").read_text())
    single = json.loads((tmp_path / "single.json").read_text())
    assert [r["scores"] for r in dist_table["rows"]] == [r["scores"] for r in single["rows"]]
    # the failed runs, one of them on rank 1, are in the table; every rank says so
    assert [(f["name"], f["seed"]) for f in dist_table["failures"]] == [("F2", 0), ("F2", 1)]
    assert r0["code"] == r1["code"] == 1
    # --out: the runs of both ranks are cached; a re-run trains only the failed ones again
    assert len(list((tmp_path / "out" / "runs").glob("*.json"))) == 4
    assert sorted(r0["ran_again"] + r1["ran_again"]) == [2, 3]
    assert json.loads((tmp_path / "again0.json").read_text())["rows"] == dist_table["rows"]
