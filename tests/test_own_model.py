"""grafs.search on a user's own model: the studied defaults, the budget rule, restarts picked
from scratch, the from-scratch check and the verdict (grafs.searching.entry)."""
import math
import warnings

import pytest
import torch
from torch import nn

import grafs
from grafs.errors import GrafsError, GrafsWarning
from grafs.searching.check import nearly_affine
from grafs.searching.config import MIN_STEPS_BEFORE_DROP, MIN_TOTAL_STEPS, size_budget
from grafs.searching.scratch import ScratchTrainer
from grafs.searching.result import SearchResult
from grafs.searching.verdict import Verdict

SMALL = dict(template="B(U(x), U(x))", unary=("identity", "relu", "tanh", "exp"),
             binary=("add", "mul"))


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def space():
    return grafs.SearchSpace(**SMALL, normalize=True)


def test_budget_sizes_the_search_from_the_steps_per_epoch():
    for spe in (1, 7, 17, 47, 200, 5000):
        epochs, warm, start = size_budget(spe)
        assert (start - warm) * spe >= MIN_STEPS_BEFORE_DROP
        assert epochs * spe >= MIN_TOTAL_STEPS and epochs > start
        assert warm >= 1
        assert size_budget(spe, epochs, warm, start) == (epochs, warm, start)  # and it passes


def test_a_budget_below_what_alpha_needs_is_refused_with_the_numbers():
    with pytest.raises(GrafsError) as err:
        size_budget(17, epochs=10)          # the old default on scikit-learn's digits: 170 steps
    msg = str(err.value)
    assert "170 steps in all (needs 500)" in msg and "budget='auto'" in msg and "as_given" in msg
    with pytest.raises(GrafsError, match="epochs"):
        grafs.search(model(), data(), epochs=3, batch_size=32, space=space(), progress=False)


def test_auto_budget_defaults_and_verdict_on_a_user_model():
    r = grafs.search(model(), data(), batch_size=32, space=space(), seed=0, progress=False,
                     verdict_seeds=2)
    s = r.settings
    assert s["preset"] == "auto" and s["arch_lr"] == pytest.approx(3e-2)
    assert s["arch_weight_decay"] == 0.0 and s["normalize"]
    spe = s["steps_per_epoch"]
    assert (s["shrink_start"] - s["warmstart_epochs"]) * spe >= MIN_STEPS_BEFORE_DROP
    assert s["epochs"] * spe >= MIN_TOTAL_STEPS
    v = r.verdict
    assert isinstance(v, Verdict) and v.original == "relu(x)" and v.formula == r.formula
    assert len(v.found_losses) == len(v.original_losses) == 2
    assert all(math.isfinite(x) for x in v.found_losses + v.original_losses)
    assert str(v).startswith(f"found {r.formula}: val loss")
    # the verdict survives a save and a load
    assert SearchResult.load(r.save("/tmp/grafs_own_model_result")).verdict.to_dict() == v.to_dict()


def test_the_verdict_compares_means_against_the_noise():
    better = Verdict("f", "relu(x)", [0.10, 0.11, 0.12], [0.20, 0.21, 0.22])
    assert better.better and better.no_worse and "better" in str(better)
    tie = Verdict("f", "relu(x)", [0.20, 0.25, 0.15], [0.21, 0.19, 0.20])
    assert not tie.better and tie.no_worse
    worse = Verdict("f", "relu(x)", [0.40, 0.41, 0.42], [0.20, 0.21, 0.22])
    assert not worse.better and not worse.no_worse and "keep relu(x)" in str(worse)
    kept = Verdict("relu(x)", "relu(x)", [0.2, 0.21], [0.2, 0.21])
    assert str(kept).startswith("kept your relu(x)") and kept.no_worse and not kept.better
    diverged = Verdict("f", "relu(x)", [0.1, math.inf], [0.2, 0.2])
    assert not diverged.better and not diverged.no_worse
    # one seed: no estimate of the noise, so never "better" (it was, on any lower loss)
    one = Verdict("f", "relu(x)", [0.10], [0.20])
    assert not one.better and one.no_worse and "one seed: no estimate of the noise" in str(one)


def test_a_formula_that_does_not_train_from_scratch_is_never_returned(monkeypatch):
    """The search's own loss, optimizer and data: a formula whose loss overflows is replaced by
    its clipped form when that trains, else by the original activation, with a warning."""
    import grafs.searching.loop as loop

    def fake(formula):
        def run(model, *a, **k):
            return SearchResult(formula, {"epochs": [0]}, {})
        return run
    sgd = lambda p: torch.optim.SGD(p, lr=10.0)      # noqa: E731
    for formula, opt, want in [("sinh(sinh(sinh(4*x)))", None, "clamp"),    # overflows unclipped
                               ("exp(exp(exp(exp(x))))*1e30", sgd, "relu(x)"),  # clipped too
                               ("0.7*(x - 1.2) + 0.8", None, "relu(x)")]:     # affine: linear layers
        monkeypatch.setattr(loop, "search", fake(formula))
        with pytest.warns(GrafsWarning, match="does not train from scratch|is affine"):
            r = grafs.search(model(), data(), epochs=2, budget="as_given", batch_size=32,
                             space=space(), progress=False, verdict_seeds=0, optimizer=opt)
        assert r.history["unusable_formula"] == formula
        assert want in r.formula
        assert math.isfinite(ScratchTrainer(
            model(), data(), data(1), epochs=2, batch_size=32, loss_fn=None, optimizer=opt,
            scheduler=None, activation_types=(nn.ReLU,), device=torch.device("cpu")).val_loss(r.formula))


def test_restarts_are_picked_by_training_each_formula_from_scratch():
    r = grafs.search(model(), data(), epochs=4, budget="as_given", restarts=2, batch_size=32,
                     space=space(), progress=False, verdict_seeds=0, seed=3)
    table = r.history["restarts"]
    assert [t["seed"] for t in table] == [3, 1003]
    scores = [t["score"] for t in table]
    assert all(math.isfinite(s) for s in scores)
    assert r.formula == table[scores.index(min(scores))]["formula"]
    assert r.settings["scratch_runs"] >= 2          # one per restart (+ the check)


def test_paper_preset_keeps_the_papers_settings_and_runs_no_checks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrafsWarning)
        r = grafs.search(model(), data(), preset="paper", epochs=3, batch_size=32,
                         space=grafs.SearchSpace(**SMALL), progress=False)
    assert r.settings["arch_lr"] == pytest.approx(1e-3) and r.settings["preset"] == "paper"
    assert r.settings["arch_weight_decay"] == pytest.approx(1e-3)
    assert r.verdict is None and "scratch_runs" not in r.settings
    with pytest.raises(GrafsError, match="preset"):
        grafs.search(model(), data(), preset="fast")


def test_a_formula_worse_than_the_original_is_rejected_by_the_verdict(monkeypatch):
    import grafs.searching.loop as loop
    dead = "1e-4*tanh(x)"       # trains (finite) but the network can hardly use it
    monkeypatch.setattr(loop, "search", lambda model, *a, **k: SearchResult(dead, {"epochs": [0]}, {}))
    kw = dict(epochs=20, budget="as_given", batch_size=32, space=space(), progress=False,
              verdict_seeds=2, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    with pytest.warns(GrafsWarning, match="returning your original activation relu"):
        r = grafs.search(model(), data(), **kw)
    assert r.formula == "relu(x)" and r.history["rejected_formula"] == dead
    assert r.verdict.formula == dead and not r.verdict.no_worse
    kept = grafs.search(model(), data(), keep_original_if_worse=False, **kw)
    assert kept.formula == dead and "rejected_formula" not in kept.history


@pytest.mark.parametrize("formula, affine", [
    ("0.7*(x - 1.2) + 0.8", True), ("min(0.4985*x - 0.1276, 0.7062*x - 0.8295)", True),
    ("3*x", True), ("relu(x)", False), ("abs(x)", False), ("gelu(x)", False), ("x*x", False),
    ("0.09621*x*max(-0.04581*x, 0.7062*x - 0.7127)", False), ("tanh(x)", False),
    ("max(x, 0.999*x)", True)])
def test_nearly_affine_on_the_pre_activation_range(formula, affine):
    assert nearly_affine(grafs.parse(formula)) is affine


def test_evaluate_runs_the_protocol_on_a_user_model(tmp_path):
    x, y = data(160)
    table = grafs.evaluate(model, (x, y), ["tanh(x)"], seeds=2, baselines=["relu"], epochs=2,
                           batch_size=32, progress=False, out_dir=tmp_path)
    assert [r.name for r in table.rows] == ["F1", "ReLU"]
    assert table.metric == "accuracy" and table.higher_is_better
    for r in table.rows:
        assert len(r.scores) == 2 and all(0.0 <= s <= 1.0 for s in r.scores)
    # the seeds are reproducible and a re-run reads the cache
    again = grafs.evaluate(model, (x, y), ["tanh(x)"], seeds=2, baselines=["relu"], epochs=2,
                           batch_size=32, progress=False, out_dir=tmp_path)
    assert [r.scores for r in again.rows] == [r.scores for r in table.rows]
    # regression targets: mean squared error, lower is better
    reg = grafs.evaluate(lambda: nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 1)),
                         (x, x[:, :1] * x[:, 1:2]), [], seeds=1, baselines=["gelu"], epochs=1,
                         progress=False)
    assert reg.metric == "mse" and not reg.higher_is_better
    with pytest.raises(GrafsError, match="pair of tensors"):
        grafs.evaluate(model, x, ["tanh(x)"], progress=False)


def test_evaluate_setup_errors_are_one_clear_error_not_a_table_of_failed_runs():
    """A model instead of a builder, int32 targets or a model with no activation gave a table
    whose every run had failed (no exception, no warning)."""
    x, y = data(64)
    args = dict(seeds=1, baselines=["relu"], epochs=1, batch_size=32, progress=False)
    with pytest.raises(GrafsError, match="make_model must build a fresh model"):
        grafs.evaluate(model(), (x, y), ["tanh(x)"], **args)
    with pytest.raises(GrafsError, match="jobs=2: worker processes need a built-in task"):
        grafs.evaluate(model, (x, y), ["tanh(x)"], jobs=2, **args)
    with pytest.raises(GrafsError, match=r"a forward and loss on 2 training examples "
                                         r"\(inputs \(2, 6\) torch.float32, targets \(2,\) "
                                         r"torch.int32\) failed with RuntimeError"):
        grafs.evaluate(model, (x, y.int()), ["tanh(x)"], **args)
    with pytest.raises(GrafsError, match="no activation"):
        grafs.evaluate(lambda: nn.Sequential(nn.Linear(6, 2)), (x, y), ["tanh(x)"], **args)


def test_search_input_errors_say_what_arrived(tmp_path):
    """Inputs or targets the model or loss cannot take were torch's message from inside the
    first step (mat1 and mat2 must have the same dtype, expected target dtype Long); numpy
    arrays were 'a pair of tensors ... got tuple'; resume=True was a TypeError."""
    import numpy as np
    x, y = data()
    args = dict(space=space(), epochs=2, budget="as_given", progress=False, check=False,
                verdict_seeds=0)
    with pytest.raises(GrafsError, match=r"a forward and loss on 8 training examples \(inputs "
                                         r"\(8, 6\) torch.float64.*failed with RuntimeError"):
        grafs.search(model(), (x.double(), y), **args)
    with pytest.raises(GrafsError, match=r"targets \(8,\) torch.int32\) failed"):
        grafs.search(model(), (x, y.int()), **args)
    with pytest.raises(GrafsError, match=r"numpy arrays: convert them with torch.from_numpy"):
        grafs.search(model(), (x.numpy(), np.asarray(y)), **args)
    with pytest.raises(GrafsError, match="resume=True resumes from checkpoint_dir"):
        grafs.search(model(), (x, y), resume=True, **args)
    first = grafs.search(model(), (x, y), checkpoint_dir=tmp_path, **args)
    again = grafs.search(model(), (x, y), checkpoint_dir=tmp_path, resume=True, **args)
    assert again.formula == first.formula


def test_evaluate_cache_is_keyed_by_the_model_data_and_loss(tmp_path):
    """out_dir returned the cached scores of another model, other labels or another loss (the
    key held only the task's sizes and settings); a non-finite test score was cached as a
    result and then broke the table (statistics on NaN)."""
    x, y = data(160)
    small = lambda: nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))    # noqa: E731
    big = lambda: nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 2))     # noqa: E731
    kw = dict(seeds=1, epochs=1, baselines=["relu"], batch_size=32, progress=False)
    first = grafs.evaluate(small, (x, y), [], out_dir=tmp_path, **kw).rows[0].scores
    assert grafs.evaluate(small, (x, y), [], out_dir=tmp_path, **kw).rows[0].scores == first
    for make, (xs, ys) in ((big, (x, y)), (small, (x, 1 - y))):
        cached = grafs.evaluate(make, (xs, ys), [], out_dir=tmp_path, **kw).rows[0].scores
        assert cached == grafs.evaluate(make, (xs, ys), [], **kw).rows[0].scores
    def nan_metric(out, t):      # (as an activation that overflows on the test inputs gives)
        return torch.tensor(float("nan"))
    nan = grafs.evaluate(small, (x, y), ["tanh(x)"], seeds=2, baselines=[], epochs=1,
                         batch_size=32, progress=False, out_dir=tmp_path, metric=nan_metric)
    assert nan.rows[0].scores == [] and len(nan.failures) == 2
    assert "not finite" in nan.failures[0]["error"] and "failed" in nan.markdown()
