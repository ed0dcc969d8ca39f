"""Restarts (grafs.restarts): several searches on one split, the lowest final validation loss wins."""
import math

import pytest
import torch

from grafs.errors import GrafsError
from grafs.restarts import (final_val_loss, pick_best, restart_seeds, run_restarts,
                            search_restarts)
from grafs.runtime.space import SearchSpace
from grafs.search import search, split_dataset
from grafs.search_result import SearchResult
from tests.test_search import SPACE, data, model


def fake(formula, val_losses, seconds=1.0):
    return SearchResult(formula, {"val_loss": list(val_losses)}, {"seed": 0}, seconds)


def test_restart_seeds_start_with_the_plain_seed():
    assert restart_seeds(7, 1) == [7]
    assert restart_seeds(7, 3) == [7, 1007, 2007]
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(GrafsError, match="restarts must be an int >= 1"):
            restart_seeds(0, bad)


def test_pick_best_takes_the_lowest_last_validation_loss_and_records_every_restart():
    rs = [fake("relu(x)", [0.9, 0.5], 2.0), fake("tanh(x)", [0.4, 0.3], 3.0),
          fake("abs(x)", [0.1, 0.6], 4.0)]
    best = pick_best(rs, [0, 1000, 2000])
    assert best.formula == "tanh(x)"          # the last epoch counts, not the best epoch
    assert best.search_seconds == 9.0         # what the user waited for: all three
    assert best.settings["restarts"] == 3
    table = best.history["restarts"]
    assert [r["seed"] for r in table] == [0, 1000, 2000]
    assert [r["formula"] for r in table] == ["relu(x)", "tanh(x)", "abs(x)"]
    assert [r["val_loss"] for r in table] == [0.5, 0.3, 0.6]
    assert [r["chosen"] for r in table] == [False, True, False]


def test_pick_best_never_prefers_a_non_finite_loss_and_takes_the_first_on_ties():
    rs = [fake("a(x)", [math.nan]), fake("b(x)", [0.2]), fake("c(x)", [math.inf]), fake("d(x)", [0.2])]
    best = pick_best(rs, [0, 1, 2, 3])
    assert best.formula == "b(x)"
    assert best.history["restarts"][0]["val_loss"] is None
    assert final_val_loss(fake("e(x)", [])) == math.inf
    only_bad = pick_best([fake("a(x)", [math.nan]), fake("b(x)", [math.inf])], [0, 1])
    assert only_bad.formula == "a(x)"
    with pytest.raises(GrafsError, match="one seed per result"):
        pick_best(rs, [0, 1])


KW = dict(space=SearchSpace(**SPACE), epochs=4, batch_size=32, progress=False, arch_lr=3e-2)


def test_search_restarts_runs_each_seed_on_one_split_and_leaves_the_model_alone(tmp_path):
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = search_restarts(net, data(), restarts=2, seed=1, checkpoint_dir=tmp_path, **KW)
    # the user's model is copied, not searched in place
    assert isinstance(net[1], torch.nn.ReLU)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    table = r.history["restarts"]
    assert [t["seed"] for t in table] == [1, 1001]
    assert r.formula == min(table, key=lambda t: t["val_loss"])["formula"]
    # each restart is the plain search with its seed on the split made with the first seed
    tr, va = split_dataset(data(), 0.75, 1)
    for t in table:
        plain = search(model(), tr, va, seed=t["seed"], **KW)
        assert plain.formula == t["formula"]
        assert plain.history["val_loss"][-1] == t["val_loss"]
    assert (tmp_path / "restart-0" / "checkpoint.pt").exists()
    assert (tmp_path / "restart-1" / "checkpoint.pt").exists()


def test_resumed_restarts_equal_the_uninterrupted_run(tmp_path):
    """A run stopped inside its second restart resumes it and runs the third from scratch."""
    from grafs.search import _Interrupted
    full = search_restarts(model(), data(), restarts=3, seed=0, **KW)
    calls = []

    def one(s, ck, res, stop):
        calls.append((s, res))
        assert stop is None                  # full restarts: nobody is stopped
        stop = 1 if s == 1000 and res is None else None
        return search(model(), *split_dataset(data(), 0.75, 0), seed=s, checkpoint_dir=ck,
                      resume=res, _stop_after_epoch=stop, **KW)
    with pytest.raises(_Interrupted):
        run_restarts(one, 0, 3, tmp_path)
    again = run_restarts(one, 0, 3, tmp_path, resume=tmp_path)
    assert again.formula == full.formula
    assert [t["val_loss"] for t in again.history["restarts"]] == \
        [t["val_loss"] for t in full.history["restarts"]]
    # the second call resumed restarts 0 and 1 from their checkpoints, started restart 2
    assert [(s, res is not None) for s, res in calls[2:]] == [(0, True), (1000, True), (2000, False)]


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
def test_task_restarts_come_from_the_search_config(tmp_path):
    from grafs.search import search_task
    from grafs.tasks import get_task
    small = dict(teacher="tanh(x)", num_train=256, num_test=32, width=8, epochs=3,
                 warmstart_epochs=1, shrink_start_epoch=1)
    space = SearchSpace("U(x)", unary=["relu", "tanh", "square"], binary=["add"])
    one = search_task(get_task("teacher", **small, restarts=1), seed=0, space=space, progress=False)
    assert "restarts" not in one.history
    two = search_task(get_task("teacher", **small, restarts=2), seed=0, space=space,
                      progress=False, checkpoint_dir=tmp_path)
    table = two.history["restarts"]
    assert [t["seed"] for t in table] == [0, 1000]
    assert table[0]["formula"] == one.formula          # restart 0 is the plain search
    assert table[0]["val_loss"] == one.history["val_loss"][-1]
    assert two.settings["restarts"] == 2
    with pytest.raises(GrafsError, match="restarts must be an int >= 1"):
        get_task("teacher", restarts=0)


def test_a_race_compares_the_restarts_at_pick_epoch_and_runs_only_the_best_on(tmp_path):
    tr, va = split_dataset(data(), 0.75, 0)
    plain = {s: search(model(), tr, va, seed=s, **KW) for s in (0, 1000, 2000)}
    at_pick = {s: r.history["val_loss"][1] for s, r in plain.items()}
    winner = min(at_pick, key=at_pick.get)
    r = search_restarts(model(), data(), restarts=3, seed=0, pick_epoch=1, **KW)
    # the winner ran on to the end exactly as its uninterrupted search
    assert r.formula == plain[winner].formula
    assert r.history["val_loss"] == plain[winner].history["val_loss"]
    assert r.settings["restart_pick_epoch"] == 1
    table = r.history["restarts"]
    assert [t["seed"] for t in table] == [0, 1000, 2000]
    assert [t["val_loss"] for t in table] == [at_pick[s] for s in (0, 1000, 2000)]
    for t in table:
        assert t["chosen"] == (t["seed"] == winner)
        assert t.get("stopped_at") == (None if t["chosen"] else 1)
        if not t["chosen"]:      # the loser's leading formula where it stopped
            assert t["formula"] == plain[t["seed"]].history["formula"][1]
    assert r.search_seconds == pytest.approx(sum(t["search_seconds"] for t in table))


@pytest.mark.parametrize("dies_in", ["a head", "the winner's run on"])
def test_an_interrupted_race_resumes_to_the_same_result(tmp_path, dies_in):
    from grafs.search import _Interrupted
    full = search_restarts(model(), data(), restarts=3, seed=0, pick_epoch=1, **KW)
    tr, va = split_dataset(data(), 0.75, 0)
    calls = []

    def one(s, ck, res, stop, crash=False):
        calls.append((s, stop, res is not None))
        if crash and dies_in == "a head" and s == 2000:
            raise RuntimeError("killed")               # before restart 2 wrote anything
        if crash and dies_in == "the winner's run on" and stop is None:
            stop = 2                                   # stopped one epoch past the pick
        return search(model(), tr, va, seed=s, checkpoint_dir=ck, resume=res,
                      _stop_after_epoch=stop, **KW)
    with pytest.raises((RuntimeError, _Interrupted)):
        run_restarts(lambda *a: one(*a, crash=True), 0, 3, tmp_path, None, 1)
    calls.clear()
    again = run_restarts(one, 0, 3, tmp_path, tmp_path, 1)
    assert again.formula == full.formula
    assert again.history["val_loss"] == full.history["val_loss"]
    assert again.history["restarts"] == [{**t, "search_seconds": a["search_seconds"]}
                                         for t, a in zip(full.history["restarts"],
                                                         again.history["restarts"])]
    heads = [c for c in calls if c[1] is not None]
    # finished heads are read from their checkpoints, not run again
    assert heads == ([(2000, 1, False)] if dies_in == "a head" else [])


def test_pick_epoch_is_checked():
    from grafs.tasks import get_task
    with pytest.raises(GrafsError, match="pick_epoch must be None or an int >= 0"):
        run_restarts(lambda *a: None, 0, 2, None, None, -1)
    with pytest.raises(GrafsError, match="restart_pick_epoch must be None or an epoch after the warm start"):
        get_task("teacher", restarts=3, restart_pick_epoch=0)      # inside the warm start
    with pytest.raises(GrafsError, match="restart_pick_epoch"):
        get_task("teacher", restarts=3, restart_pick_epoch=1.5)
    # past the last epoch: compared at the end, so a shorter run still works
    assert get_task("teacher", restarts=3, restart_pick_epoch=10_000, epochs=5) is not None
    assert get_task("teacher", restarts=3, restart_pick_epoch=20).search_config.restart_pick_epoch == 20
    # the teacher task's default is a race of three compared after epoch 20 of 60
    # (docs/results-teacher.md); the other tasks run one search, as the paper
    sc = get_task("teacher").search_config
    assert (sc.restarts, sc.restart_pick_epoch, sc.epochs) == (3, 19, 60)
    assert get_task("mnist1d", num_samples=200).search_config.restarts == 1
