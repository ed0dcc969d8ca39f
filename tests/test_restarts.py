"""Restarts (grafs.searching.restarts): several searches on one split, the lowest final validation loss wins."""
import math

import pytest
import torch

from grafs.callbacks import Callback
from grafs.errors import GrafsError
from grafs.searching.restarts import (final_val_loss, pick_best, restart_seeds, run_restarts,
                            search_restarts)
from grafs.runtime.space import SearchSpace
from grafs.searching import split_dataset
from grafs.searching.loop import search
from grafs.searching.result import SearchResult
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
    from grafs.searching.checkpoint import Interrupted
    full = search_restarts(model(), data(), restarts=3, seed=0, **KW)
    calls = []

    def one(s, ck, res, stop):
        calls.append((s, res))
        assert stop is None                  # full restarts: nobody is stopped
        stop = 1 if s == 1000 and res is None else None
        return search(model(), *split_dataset(data(), 0.75, 0), seed=s, checkpoint_dir=ck,
                      resume=res, _stop_after_epoch=stop, **KW)
    with pytest.raises(Interrupted):
        run_restarts(one, 0, 3, tmp_path)
    again = run_restarts(one, 0, 3, tmp_path, resume=tmp_path)
    assert again.formula == full.formula
    assert [t["val_loss"] for t in again.history["restarts"]] == \
        [t["val_loss"] for t in full.history["restarts"]]
    # the second call resumed restarts 0 and 1 from their checkpoints, started restart 2
    assert [(s, res is not None) for s, res in calls[2:]] == [(0, True), (1000, True), (2000, False)]


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
def test_task_restarts_come_from_the_search_config(tmp_path):
    from grafs.protocol.task_search import search_task
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
    from grafs.searching.checkpoint import Interrupted
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
    with pytest.raises((RuntimeError, Interrupted)):
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
    with pytest.raises(GrafsError, match="falls in the warm start"):
        search_restarts(model(), data(), restarts=2, pick_epoch=0, warmstart_epochs=1, **KW)
    with pytest.raises(GrafsError, match="pick_epoch must be None or an int >= 0"):
        run_restarts(lambda *a: None, 0, 2, None, None, -1)
    with pytest.raises(GrafsError, match="restart_pick_epoch must be None or an epoch after the warm start"):
        get_task("teacher", restarts=3, restart_pick_epoch=0)      # inside the warm start
    with pytest.raises(GrafsError, match="restart_pick_epoch"):
        get_task("teacher", restarts=3, restart_pick_epoch=1.5)
    # past the last epoch: compared at the end, so a shorter run still works
    assert get_task("teacher", restarts=3, restart_pick_epoch=10_000, epochs=5) is not None
    assert get_task("teacher", restarts=3, restart_pick_epoch=20).search_config.restart_pick_epoch == 20
    # the teacher task's default: three restarts of 60 epochs, each on its own split, picked
    # by training their formulas from scratch (docs/results-teacher.md); the other tasks run
    # one search, as the paper
    sc = get_task("teacher").search_config
    assert (sc.restarts, sc.restart_pick_epoch, sc.restart_splits, sc.epochs) == (3, None, True, 60)
    assert sc.restart_select == "scratch"
    assert get_task("mnist1d", num_samples=200).search_config.restart_select == "val_loss"
    assert sc.arch_batch_size == 512 and get_task("mnist1d", num_samples=200).search_config.arch_batch_size is None
    assert get_task("mnist1d", num_samples=200).search_config.restarts == 1


# --- regression tests (review of the restarts feature) ---

def _crashing_one(tr, va, kw, crash_seed=None):
    """``one`` for run_restarts; a real crash (not the test hook) in restart ``crash_seed``'s
    second epoch."""
    def one(s, ck, res, stop):
        if s == crash_seed:
            from grafs.searching.checkpoint import Interrupted
            try:
                search(model(), tr, va, seed=s, checkpoint_dir=ck, resume=res, _stop_after_epoch=0, **kw)
            except Interrupted:
                raise RuntimeError("killed") from None
        return search(model(), tr, va, seed=s, checkpoint_dir=ck, resume=res,
                      _stop_after_epoch=stop, **kw)
    return one


@pytest.mark.parametrize("pick", [None, 1])
def test_a_fresh_run_in_a_reused_folder_never_resumes_an_earlier_runs_restarts(tmp_path, pick):
    """An earlier run (other settings) left restart-2/checkpoint.pt; a fresh run in the same
    folder crashed in restart 1; its resume must give the uninterrupted result of its own
    settings, not mix in (or fail on) the earlier run's restart 2."""
    tr, va = split_dataset(data(), 0.75, 0)
    other = {**KW, "arch_lr": 5e-2}
    run_restarts(_crashing_one(tr, va, other), 0, 3, tmp_path, None, pick)      # the earlier run
    full = run_restarts(_crashing_one(tr, va, KW), 0, 3, None, None, pick)
    with pytest.raises(RuntimeError, match="killed"):
        run_restarts(_crashing_one(tr, va, KW, crash_seed=1000), 0, 3, tmp_path, None, pick)
    assert not (tmp_path / "restart-2" / "checkpoint.pt").exists()
    again = run_restarts(_crashing_one(tr, va, KW), 0, 3, tmp_path, tmp_path, pick)
    assert again.formula == full.formula
    assert [(t["formula"], t["val_loss"]) for t in again.history["restarts"]] == \
        [(t["formula"], t["val_loss"]) for t in full.history["restarts"]]


def test_a_race_resumed_without_checkpoint_dir_continues_in_the_resume_folder(tmp_path):
    tr, va = split_dataset(data(), 0.75, 0)
    full = run_restarts(_crashing_one(tr, va, KW), 0, 2, None, None, 1)
    with pytest.raises(RuntimeError, match="killed"):
        run_restarts(_crashing_one(tr, va, KW, crash_seed=1000), 0, 2, tmp_path, None, 1)
    calls = []

    def one(s, ck, res, stop):
        calls.append((s, ck, res, stop))
        return _crashing_one(tr, va, KW)(s, ck, res, stop)
    again = run_restarts(one, 0, 2, None, tmp_path, 1)      # as search(resume=...)
    assert again.formula == full.formula
    assert again.history["val_loss"] == full.history["val_loss"]
    # restart 0's head is read from its checkpoint; restart 1 resumes where it stopped
    assert [(s, res) for s, _, res, stop in calls if stop is not None] == [(1000, tmp_path / "restart-1")]
    assert all(ck is not None and str(ck).startswith(str(tmp_path)) for _, ck, _, _ in calls)


def test_a_race_resumed_from_one_folder_into_another_gives_the_same_result(tmp_path):
    tr, va = split_dataset(data(), 0.75, 0)
    one = _crashing_one(tr, va, KW)
    full = run_restarts(one, 0, 2, tmp_path / "a", None, 1)
    again = run_restarts(one, 0, 2, tmp_path / "b", tmp_path / "a", 1)
    assert again.formula == full.formula
    assert again.history["val_loss"] == full.history["val_loss"]


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
def test_resuming_restarts_from_a_folder_without_them_is_a_clear_error(tmp_path):
    with pytest.raises(GrafsError, match="no restart-0/checkpoint.pt"):
        run_restarts(lambda *a: None, 0, 2, None, tmp_path, None)
    search(model(), data(), seed=0, checkpoint_dir=tmp_path, **{**KW, "epochs": 2})
    with pytest.raises(GrafsError, match="single search's checkpoint: resume that with restarts=1"):
        run_restarts(lambda *a: None, 0, 2, tmp_path, tmp_path, 1)


def test_a_head_read_past_pick_epoch_counts_its_time_up_to_pick_epoch(tmp_path):
    """A restart that ran past pick_epoch in an earlier run (e.g. full restarts, resumed as a
    race) is compared at pick_epoch, and so is its time."""
    import json
    hist = {"epochs": [0, 1, 2, 3], "val_loss": [0.9, 0.5, 0.4, 0.3], "seconds": [1.0, 1.0, 2.0, 3.0],
            "formula": ["a(x)", "b(x)", "c(x)", "d(x)"]}
    for i in (0, 1):
        (tmp_path / f"restart-{i}").mkdir()
        h = {**hist, "val_loss": [v + i for v in hist["val_loss"]]}     # restart 0 wins
        # (the keys a checkpoint reader checks; a real one also holds the model and optimizers)
        torch.save({"epoch": 3, "settings": "{}", "history": json.dumps(h), "elapsed": 10.0,
                    "model": {}, "w_opt": {}, "a_opt": {}, "cell": {},
                    "rng": {"torch": torch.get_rng_state(), "numpy": "[]", "python": "[]"}},
                   tmp_path / f"restart-{i}" / "checkpoint.pt")

    def one(s, ck, res, stop):
        assert stop is None and s == 0
        return fake("d(x)", hist["val_loss"], 10.0)
    r = run_restarts(one, 0, 2, tmp_path, tmp_path, 1)
    loser = r.history["restarts"][1]
    assert (loser["formula"], loser["val_loss"], loser["stopped_at"]) == ("b(x)", 1.5, 1)
    assert loser["search_seconds"] == 5.0               # 10 s in all, 5 of them past epoch 1
    assert r.search_seconds == 15.0


def test_a_distributed_race_without_a_shared_checkpoint_dir_is_a_clear_error(tmp_path, monkeypatch):
    import grafs.searching.distributed as gdist
    from grafs.searching.checkpoint import Interrupted
    monkeypatch.setattr(gdist, "env_world_size", lambda: 2)       # torchrun, group not yet made
    with pytest.raises(GrafsError, match="needs a checkpoint_dir that every process can read"):
        run_restarts(lambda *a: None, 0, 2, None, None, 1, distributed=True)

    def one(s, ck, res, stop):      # a rank that does not see what rank 0 wrote
        if stop is not None:
            raise Interrupted(stop)
        return fake("x", [0.1])
    def ran(*a):
        raise LookupError("ran")
    # distributed=False: each process runs its own search, which a temporary folder serves
    with pytest.raises(LookupError, match="ran"):
        run_restarts(ran, 0, 2, None, None, 1, distributed=False)
    with pytest.raises(GrafsError, match="cannot read its checkpoint .* shares"):
        run_restarts(one, 0, 2, tmp_path, None, 1)


def test_one_search_ignores_an_unused_restart_pick_epoch():
    from grafs.tasks import get_task
    # a pick at 19 is no reason to refuse a single search's longer warm start
    sc = get_task("teacher", restarts=1, restart_pick_epoch=19, warmstart_epochs=25,
                  shrink_start_epoch=30).search_config
    assert (sc.restarts, sc.warmstart_epochs) == (1, 25)
    with pytest.raises(GrafsError, match="give a later restart_pick_epoch, or None"):
        get_task("teacher", restart_pick_epoch=19, warmstart_epochs=25, shrink_start_epoch=30)


@pytest.mark.parametrize("pick", [None, 1])
def test_a_restart_that_diverges_is_left_out_and_the_others_go_on(pick):
    from grafs.errors import SearchError
    tr, va = split_dataset(data(), 0.75, 0)

    def one(s, ck, res, stop, bad=(1000,)):
        if s in bad:
            raise SearchError("non-finite validation loss (nan) at epoch 1, step 3")
        return search(model(), tr, va, seed=s, checkpoint_dir=ck, resume=res,
                      _stop_after_epoch=stop, **KW)
    r = run_restarts(one, 0, 3, None, None, pick)
    table = r.history["restarts"]
    assert table[1]["error"].startswith("non-finite") and table[1]["formula"] is None
    assert table[1]["val_loss"] is None and not table[1]["chosen"]
    assert r.formula in (table[0]["formula"], table[2]["formula"]) and r.formula
    with pytest.raises(SearchError, match="every one of the 3 restarts failed; the first: non-finite"):
        run_restarts(lambda s, ck, res, stop: one(s, ck, res, stop, bad=(0, 1000, 2000)),
                     0, 3, None, None, pick)


def test_a_race_winner_that_diverges_after_the_pick_hands_over_to_the_next_best():
    from grafs.errors import SearchError
    tr, va = split_dataset(data(), 0.75, 0)
    plain = {s: search(model(), tr, va, seed=s, **KW) for s in (0, 1000)}
    first = min(plain, key=lambda s: plain[s].history["val_loss"][1])
    second = 1000 if first == 0 else 0

    def one(s, ck, res, stop):
        if s == first and stop is None:        # the winner's run on
            raise SearchError("non-finite training loss (inf) at epoch 3, step 1")
        return search(model(), tr, va, seed=s, checkpoint_dir=ck, resume=res,
                      _stop_after_epoch=stop, **KW)
    r = run_restarts(one, 0, 2, None, None, 1)
    assert r.formula == plain[second].formula
    table = {t["seed"]: t for t in r.history["restarts"]}
    assert table[second]["chosen"] and "error" in table[first]


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
def test_restart_splits_gives_each_restart_its_own_split():
    from grafs.protocol.task_search import search_task
    from grafs.tasks import get_task
    small = dict(teacher="tanh(x)", num_train=256, num_test=32, width=8, epochs=3,
                 warmstart_epochs=1, shrink_start_epoch=1, restarts=2)
    space = SearchSpace("U(x)", unary=["relu", "tanh", "square"], binary=["add"])
    task = get_task("teacher", **small, restart_splits=True)
    table = search_task(task, seed=0, space=space, progress=False).history["restarts"]
    shared = search_task(get_task("teacher", **small, restart_splits=False), seed=0, space=space,
                         progress=False).history["restarts"]
    assert table[0] == {**shared[0], "search_seconds": table[0]["search_seconds"]}  # restart 0: as before
    plain = search(task.make_model(seed=1000), *task.search_split(seed=1000), space=space,
                   epochs=3, warmstart_epochs=1, shrink_start=1, seed=1000, batch_size=128,
                   loss_fn=task.loss_fn, optimizer=task.search_config.make_optimizer,
                   scheduler=lambda opt: task.search_config.make_scheduler(opt, 3 * 2),
                   arch_lr=task.search_config.arch_lr, progress=False)
    assert table[1]["val_loss"] == plain.history["val_loss"][-1]
    assert table[1]["val_loss"] != shared[1]["val_loss"]
    with pytest.raises(GrafsError, match="restart_splits must be True or False"):
        get_task("teacher", restart_splits="yes")


def test_search_restarts_own_splits_splits_with_each_restarts_seed():
    r = search_restarts(model(), data(), restarts=2, seed=0, own_splits=True, **KW)
    for t in r.history["restarts"]:
        plain = search(model(), *split_dataset(data(), 0.75, t["seed"]), seed=t["seed"], **KW)
        assert plain.history["val_loss"][-1] == t["val_loss"]
    with pytest.raises(GrafsError, match="own_splits splits the training data per restart"):
        search_restarts(model(), data(), data(), restarts=2, own_splits=True, **KW)


def test_pick_best_with_a_score_compares_on_it_and_records_both():
    rs = [fake("relu(x)", [0.5]), fake("tanh(x)", [0.3]), fake("abs(x)", [0.6]),
          SearchResult("", {"val_loss": []}, {"error": "boom"})]
    scores = {"relu(x)": 0.2, "tanh(x)": 0.9, "abs(x)": math.nan}
    called = []

    def score(r):
        called.append(r.formula)
        return scores[r.formula]
    best = pick_best(rs, [0, 1, 2, 3], score)
    assert best.formula == "relu(x)"               # the score decides, not the val loss
    assert called == ["relu(x)", "tanh(x)", "abs(x)"]   # a failed restart is never scored
    table = best.history["restarts"]
    assert [t["score"] for t in table] == [0.2, 0.9, None, None]   # NaN: never chosen
    assert [t["val_loss"] for t in table] == [0.5, 0.3, 0.6, None]
    assert best.settings["restart_select_seconds"] >= 0
    assert "score" not in pick_best(rs[:3], [0, 1, 2]).history["restarts"][0]


def test_restart_select_scratch_picks_the_restart_whose_formula_trains_best(tmp_path):
    from grafs.protocol.task_search import scratch_val_loss, search_task
    from grafs.tasks import get_task
    small = dict(teacher="tanh(x)", num_train=256, num_test=32, width=8, epochs=3,
                 warmstart_epochs=1, shrink_start_epoch=1, eval_epochs=2, restarts=3)
    space = SearchSpace("U(x)", unary=["relu", "tanh", "square"], binary=["add"])
    task = get_task("teacher", **small, restart_select="scratch")
    r = search_task(task, seed=0, space=space, progress=False)
    # the scorer asks for the distributed context: outside torchrun that makes no process group
    assert not torch.distributed.is_available() or not torch.distributed.is_initialized()
    plain = search_task(get_task("teacher", **small), seed=0, space=space, progress=False)
    table = r.history["restarts"]
    # the same three searches as the default selection; only the pick differs
    assert [t["formula"] for t in table] == [t["formula"] for t in plain.history["restarts"]]
    split = task.search_split(seed=0)
    for t in table:     # each score: its formula trained from scratch, scored on the split
        assert t["score"] == scratch_val_loss(task, t["formula"], split, seed=0)
    assert r.formula == min(table, key=lambda t: t["score"])["formula"]
    assert r.settings["restart_select"] == "scratch"
    # the trainings that picked it are part of what the user waited for
    assert r.settings["restart_select_seconds"] > 0
    assert r.search_seconds == pytest.approx(sum(t["search_seconds"] for t in table)
                                             + r.settings["restart_select_seconds"])
    with pytest.raises(GrafsError, match="restart_select must be one of 'val_loss', 'scratch'"):
        get_task("teacher", restart_select="best")


def test_scratch_val_loss_is_inf_for_a_formula_that_does_not_train():
    from grafs.protocol.task_search import scratch_val_loss
    from grafs.tasks import get_task
    task = get_task("teacher", num_train=64, num_test=8, width=4, eval_epochs=1)
    split = task.search_split(seed=0)
    assert scratch_val_loss(task, "exp(exp(exp(x)))*1e30", split) == math.inf
    ok = scratch_val_loss(task, "tanh(x)", split)
    assert math.isfinite(ok) and ok == scratch_val_loss(task, "tanh(x)", split)   # seeded


def _dropout_teacher(**kw):
    """The teacher task with dropout in front of its network: a model that draws from the
    global RNG while it trains."""
    import dataclasses

    from grafs.tasks import get_task
    task = get_task("teacher", **kw)
    base = task.model_builder
    return dataclasses.replace(
        task, model_builder=lambda act: torch.nn.Sequential(torch.nn.Dropout(0.2), base(act)))


def test_scratch_val_loss_is_seeded_whatever_ran_before_and_leaves_the_rng_alone():
    from grafs.protocol.task_search import scratch_val_loss
    task = _dropout_teacher(num_train=64, num_test=8, width=4, eval_epochs=1)
    split = task.search_split(seed=0)
    torch.manual_seed(1)
    a = scratch_val_loss(task, "tanh(x)", split)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    assert scratch_val_loss(task, "tanh(x)", split) == a
    assert torch.equal(torch.get_rng_state(), state)


class _Killed(Exception):
    pass


class _KillAfter(Callback):
    """A callback that stops the process, as a kill would, after the ``n``-th epoch of any
    of its searches (each epoch's checkpoint is written before)."""

    def __init__(self, n):
        self.n, self.ends = n, 0

    def on_epoch_end(self, info):
        self.ends += 1
        if self.ends == self.n:
            raise _Killed()


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
@pytest.mark.parametrize("pick,killed_after", [
    (None, 6),      # inside restart 1 (3 restarts of 4 epochs)
    (1, 3),         # inside restart 1's head (heads of 2 epochs)
    (1, 7),         # in the winner's run on: the heads are read back, not run again
])
def test_restart_select_scratch_resumes_to_the_uninterrupted_result(tmp_path, pick, killed_after):
    from grafs.protocol.task_search import search_task
    task = _dropout_teacher(teacher="tanh(x)", num_train=256, num_test=32, width=8, epochs=4,
                            warmstart_epochs=1, shrink_start_epoch=1, eval_epochs=2,
                            restarts=3, restart_select="scratch", restart_pick_epoch=pick)
    space = SearchSpace("U(x)", unary=["relu", "tanh", "square"], binary=["add"])
    full = search_task(task, seed=0, space=space, progress=False)
    with pytest.raises(_Killed):
        search_task(task, seed=0, space=space, progress=False, checkpoint_dir=tmp_path,
                    callbacks=[_KillAfter(killed_after)])
    torch.manual_seed(12345)        # a fresh process: its RNG is not where the first one's was
    again = search_task(task, seed=0, space=space, progress=False, checkpoint_dir=tmp_path,
                        resume=tmp_path)

    def table(r):
        return [{k: v for k, v in t.items() if k != "search_seconds"} for t in r.history["restarts"]]
    assert table(again) == table(full)
    assert again.formula == full.formula
    assert again.history["val_loss"] == full.history["val_loss"]


@pytest.mark.parametrize("pick", [None, 1])
def test_when_no_restart_scores_the_first_that_did_not_fail_is_kept(pick):
    """Every formula that was found fails to train from scratch (score inf) and restart 0
    failed: a restart that did not fail is kept, not restart 0's error raised as if all had."""
    from grafs.errors import SearchError
    failed = SearchResult("", {"val_loss": []}, {"error": "boom"})
    best = pick_best([failed, fake("", [0.1]), fake("relu(x)", [0.5]), fake("tanh(x)", [0.3])],
                     [0, 1, 2, 3], lambda r: math.inf)
    assert best.formula == "relu(x)"        # not the empty formula either
    assert [t["score"] for t in best.history["restarts"]] == [None] * 4
    assert pick_best([failed, fake("a(x)", [math.nan])], [0, 1]).formula == "a(x)"
    tr, va = split_dataset(data(), 0.75, 0)
    scored = []

    def one(s, ck, res, stop):
        if s == 0:
            raise SearchError("non-finite validation loss (nan) at epoch 1, step 3")
        return search(model(), tr, va, seed=s, checkpoint_dir=ck, resume=res,
                      _stop_after_epoch=stop, **KW)

    def score(r):
        scored.append(r.formula)
        return math.inf
    r = run_restarts(one, 0, 3, None, None, pick, epochs=KW["epochs"], score=score)
    table = r.history["restarts"]
    assert [t["chosen"] for t in table] == [False, True, False] and r.formula
    assert "error" in table[0] and len(scored) == 2     # the failed restart is never scored
    if pick is not None:                                # the kept one ran on to the end
        assert len(r.history["val_loss"]) == KW["epochs"] and "stopped_at" in table[2]
    with pytest.raises(SearchError, match="every one of the 2 restarts failed"):
        pick_best([failed, failed], [0, 1], score)
