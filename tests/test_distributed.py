"""Data-parallel search on torch.distributed: 2 CPU processes on the gloo backend.

One launch of two ranks runs every distributed scenario, forked from the test process where the
platform allows it (a spawned process spends longer importing torch and grafs than the tiny
searches take); the tests below check what each rank recorded.

What is exactly comparable with a 1-process search over the same global batch (batch_size 2B
against 2 ranks × B; rank r reads every 2nd sample of the shared permutation, so the ranks'
batches of a step are the 1-process batch of that step):
* with the Dirichlet draw replaced by its mean (``mean_samples``), the search is a
  deterministic function of the data; the averaged per-rank gradients are the full-batch
  gradient up to float summation order (~1e-7 relative), so α, γ and losses agree to ~1e-5,
  the drops and the formula's ops exactly and its printed coefficients (σ(γ) at full
  precision) to ~1e-7;
* with real sampling, each rank draws its own samples, so α differ from a 1-process run by
  sampling noise; but warm-start weight steps use the original activation and never read α,
  so the first epoch's training loss agrees to float tolerance.
"""
import json
import os
import re
import runpy
import socket
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import grafs
import grafs.searching.distributed
from grafs.errors import GrafsError, SearchError
from grafs.runtime.space import SearchSpace
from grafs.searching.checkpoint import Interrupted
from grafs.searching.loop import search
from grafs.testing.sampling import mean_samples

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")

SPACE = dict(template="B(U(B(U(x), U(x))), U(x))",
             unary=["identity", "relu", "gelu", "silu", "tanh", "square", "mul_gamma"],
             binary=["add", "mul", "mix", "max"])
B = 16          # per-rank batch
WORLD = 2
NUMBER = re.compile(r"\d+\.\d+(e-?\d+)?")
X = torch.linspace(-4, 4, 81)
KEYS = ("alpha", "gamma", "dropped", "num_active", "formula", "train_loss", "val_loss")


def data(n=128):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = ((x[:, 0] * x[:, 1] + 0.5 * x[:, 2]) > 0).long()
    return x, y


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def run(model_seed=0, **kw):
    args = dict(space=SearchSpace(**SPACE), epochs=4, seed=1, batch_size=B, progress=False,
                arch_lr=3e-2)
    args.update(kw)
    return search(model(model_seed), data(), **args)


def flat(nested):
    """α history (epoch × hole × op, ragged) as one flat tensor."""
    return torch.tensor([v for epoch in nested for hole in epoch for v in hole])


def summary(r):
    return {k: r.history[k] for k in KEYS} | {"result": r.formula, "settings": r.settings}




def nan_on_rank(bad_rank, after_calls):
    calls = [0]

    def loss(out, y):
        calls[0] += 1
        value = F.cross_entropy(out, y)
        bad = torch.distributed.get_rank() == bad_rank and calls[0] > after_calls
        return value * float("nan") if bad else value
    return loss


SCRATCH = dict(teacher="tanh(x)", num_train=256, num_test=32, width=8, epochs=3,
               warmstart_epochs=1, shrink_start_epoch=1, eval_epochs=2, restarts=2,
               restart_select="scratch")
SCRATCH_SPACE = dict(template="U(x)", unary=["relu", "tanh", "square"], binary=["add"])


def _scratch_restarts(rank):
    """search_task with two restarts picked from scratch: rank 0 alone trains each formula
    (here rank 1 would score the other way round), every rank keeps rank 0's pick."""
    from grafs.tasks import get_task
    import grafs.protocol.task_search as gsearch    # where search_task looks the scorer up
    orig, calls = gsearch.scratch_val_loss, []

    def scratch(*a, **kw):
        calls.append(a[1])
        v = orig(*a, **kw)
        return v if torch.distributed.get_rank() == 0 else -v
    gsearch.scratch_val_loss = scratch
    try:
        r = gsearch.search_task(get_task("teacher", **SCRATCH), seed=0, progress=False,
                                space=SearchSpace(**SCRATCH_SPACE))
    finally:
        gsearch.scratch_val_loss = orig
    return {"restarts": r.history["restarts"], "result": r.formula, "calls": calls,
            "settings": r.settings}


def _worker(rank, port, tmp):
    from pathlib import Path
    tmp = Path(tmp)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    grafs.searching.distributed.BUCKET_NUMEL = 64   # several flat buckets per all-reduce (real: 16M elements)
    out = {}
    # distributed=True initialises the group from torchrun's variables; the ranks start from
    # different initial weights, the search must start every rank from rank 0's
    out["full"] = summary(run(model_seed=rank, distributed=True, checkpoint_dir=tmp / "full"))
    try:
        run(checkpoint_dir=tmp / "cut", _stop_after_epoch=1)
    except Interrupted:
        pass
    out["resumed"] = summary(run(checkpoint_dir=tmp / "cut", resume=tmp / "cut"))
    with mean_samples():
        out["mean"] = summary(run())
    from torch.utils.data import DataLoader, TensorDataset
    try:
        search(model(), DataLoader(TensorDataset(*data()), batch_size=B), data(64),
               space=SearchSpace(**SPACE), epochs=2, progress=False)
    except GrafsError as err:
        out["loader_error"] = str(err)
    # 7 loss calls per epoch (3 steps × arch + weight, 1 validation batch): rank 1's losses
    # turn NaN in the third epoch, after the checkpoint of the second
    try:
        run(loss_fn=nan_on_rank(1, 2 * 7 + 3), checkpoint_dir=tmp / "nan")
    except SearchError as err:
        out["nan_error"] = str(err)
    out["scratch"] = _scratch_restarts(rank)
    (tmp / f"rank{rank}.json").write_text(json.dumps(out))
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    import multiprocessing
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    torch.multiprocessing.start_processes(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD,
                                          join=True, start_method=method)
    return tmp, [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_ranks_agree_on_alpha_drops_and_formula(ranks):
    _, (r0, r1) = ranks
    for scenario in ("full", "resumed", "mean"):
        a, b = r0[scenario], r1[scenario]
        torch.testing.assert_close(flat(a["alpha"]), flat(b["alpha"]), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(torch.tensor(a["gamma"]), torch.tensor(b["gamma"]), rtol=1e-6, atol=1e-7)
        assert a["dropped"] == b["dropped"] and a["num_active"] == b["num_active"]
        assert a["formula"] == b["formula"] and a["result"] == b["result"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)  # summed over ranks
    assert r0["full"]["num_active"][-1] == 6 and r0["full"]["settings"]["world_size"] == 2


def test_two_ranks_match_one_process_over_the_global_batch(ranks):
    _, (r0, _) = ranks
    with mean_samples():
        one = summary(run(batch_size=WORLD * B))
    two = r0["mean"]
    torch.testing.assert_close(flat(two["alpha"]), flat(one["alpha"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(two["gamma"]), torch.tensor(one["gamma"]), rtol=1e-4, atol=1e-5)
    assert two["dropped"] == one["dropped"]
    for f2, f1 in zip(two["formula"], one["formula"]):  # same ops; coefficients to ~1e-7
        assert NUMBER.sub("#", f2) == NUMBER.sub("#", f1)
        torch.testing.assert_close(grafs.compile(f2, backend="eager")(X), grafs.compile(f1, backend="eager")(X),
                                   rtol=1e-5, atol=1e-6)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    # real sampling: the warm-start epoch's weight steps do not read α
    real = summary(run(batch_size=WORLD * B))
    assert r0["full"]["train_loss"][0] == pytest.approx(real["train_loss"][0], rel=1e-5)


def test_resume_under_two_ranks_equals_uninterrupted(ranks):
    tmp, (r0, r1) = ranks
    for r in (r0, r1):
        for key in KEYS + ("result",):
            assert r["resumed"][key] == r["full"][key], key
    # a different world size is refused
    with pytest.raises(GrafsError, match="2 process.*runs on 1.*same number of processes"):
        run(resume=tmp / "full")


def test_a_failing_rank_stops_all_and_keeps_the_last_checkpoint(ranks):
    tmp, (r0, r1) = ranks
    assert "non-finite training loss" in r1["nan_error"] and "epoch 3" in r1["nan_error"]
    assert "rank 1 of 2 got a non-finite loss in epoch 3" in r0["nan_error"]
    assert "last good checkpoint" in r0["nan_error"]
    ck = torch.load(tmp / "nan" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["world_size"] == 2 and len(ck["rng_ranks"]) == 2


def test_dataloader_needs_a_distributed_sampler(ranks):
    _, (r0, r1) = ranks
    assert "DistributedSampler" in r0["loader_error"] and "DistributedSampler" in r1["loader_error"]


def test_distributed_true_outside_torchrun_is_a_clear_error(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(GrafsError, match="torchrun"):
        run(distributed=True, epochs=2)


def test_python_dash_m_grafs_runs_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["grafs", "show", "relu(x)"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("grafs", run_name="__main__")
    assert exit_.value.code == 0 and "canonical" in capsys.readouterr().out


def test_restarts_picked_from_scratch_are_scored_on_rank_0_and_picked_alike(ranks):
    from grafs.protocol.task_search import scratch_val_loss
    from grafs.tasks import get_task
    _, (r0, r1) = ranks
    a, b = r0["scratch"], r1["scratch"]
    assert a["settings"]["world_size"] == 2 and a["settings"]["restart_select"] == "scratch"
    assert [t["formula"] for t in a["restarts"]] == [t["formula"] for t in b["restarts"]]
    assert len(a["calls"]) == 2 and b["calls"] == []    # the trainings run on rank 0 alone
    strip = [{k: v for k, v in t.items() if k != "search_seconds"} for t in a["restarts"]]
    assert strip == [{k: v for k, v in t.items() if k != "search_seconds"} for t in b["restarts"]]
    assert a["result"] == b["result"] and sum(t["chosen"] for t in a["restarts"]) == 1
    # rank 0's scores: each formula trained from scratch on the whole search split
    task = get_task("teacher", **SCRATCH)
    split = task.search_split(seed=0)
    for t in a["restarts"]:
        assert t["score"] == scratch_val_loss(task, t["formula"], split, seed=0)
