"""One configuration object and one code path (issue 28): ``grafs.search`` runs a
``SearchConfig`` (its presets ``auto()``/``paper()``, or a built-in task's), and a built-in
task's search is ``grafs.search`` with the task's model, data and config."""
import warnings

import pytest
import torch

import grafs
from grafs.errors import GrafsError
from grafs.searching import entry
from grafs.searching.config import AUTO_ARCH_LR, SearchConfig, size_budget
from grafs.tasks import get_task

SMALL = dict(template="B(U(x), U(x))", unary=("identity", "relu", "tanh"), binary=("add", "mul"))


def tiny_teacher(**kw):
    return get_task("teacher", teacher="tanh(x)", num_train=256, num_test=32, width=16,
                    epochs=3, warmstart_epochs=1, shrink_start_epoch=2, **kw)


def test_presets_are_the_documented_settings():
    auto, paper = SearchConfig.auto(), SearchConfig.paper()
    assert (auto.normalize, auto.arch_lr, auto.arch_weight_decay, auto.budget) == (True, AUTO_ARCH_LR, 0.0, "auto")
    assert (auto.epochs, auto.restart_select, auto.check, auto.verdict_seeds) == (None, "scratch", True, 3)
    assert (paper.normalize, paper.arch_lr, paper.arch_weight_decay, paper.epochs) == (False, 1e-3, 1e-3, 10)
    assert (paper.check, paper.verdict_seeds, paper.budget) == (False, 0, "as_given")
    assert SearchConfig.preset("paper") == paper and SearchConfig.auto(restarts=3).restarts == 3
    with pytest.raises(GrafsError, match="preset must be one of 'auto', 'paper'"):
        SearchConfig.preset("fast")
    with pytest.raises(GrafsError, match="budget must be one of"):
        SearchConfig(budget="big")
    with pytest.raises(GrafsError, match="verdict_seeds must be an int >= 0"):
        SearchConfig.auto(verdict_seeds=-1)
    # JSON round trip, None fields included
    assert SearchConfig.from_dict(auto.to_dict()) == auto


def test_for_epochs_moves_the_warm_start_and_first_drop_inside_a_shorter_run():
    cfg = SearchConfig(epochs=60, warmstart_epochs=10, shrink_start_epoch=20)
    assert cfg.for_epochs(5).epoch_plan(10) == (5, 4, 4)
    assert cfg.for_epochs(1).epoch_plan(10) == (1, 0, None)
    assert cfg.epoch_plan(10) == (60, 10, 20)
    auto = SearchConfig.auto()
    assert auto.epoch_plan(17) == size_budget(17)          # sized from the data
    with pytest.raises(GrafsError, match="steps in all"):
        auto.for_epochs(3).epoch_plan(17)                 # checked, not clamped


def test_a_task_search_is_grafs_search_with_the_tasks_model_data_and_config(monkeypatch):
    """search_task calls grafs.search with the task's own SearchConfig (one code path)..."""
    from grafs.protocol import task_search
    task = tiny_teacher(restart_select="val_loss")     # the pick by the search's own loss
    assert task.search_config.restarts == 3 and task.search_config.restart_splits
    seen = {}
    real = entry.search

    def spy(model, *args, **kw):
        seen.update(kw, model=model, data=args)
        return real(model, *args, **kw)
    monkeypatch.setattr(entry, "search", spy)
    space = grafs.SearchSpace(**SMALL, normalize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        via_task = task_search.search_task(task, seed=0, space=space, progress=False)
    assert seen["config"] is task.search_config
    assert isinstance(seen["scratch"], task_search.TaskScratch)
    # ... so the same config on the task's model and data through grafs.search as a user
    # calls it finds the same formula (only the from-scratch measure differs: the search's
    # own recipe here, the task's evaluation protocol there)
    monkeypatch.setattr(entry, "search", real)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = grafs.search(lambda s: task.make_model(seed=s), task.train_data, config=task.search_config,
                              seed=0, space=grafs.SearchSpace(**SMALL, normalize=True),
                              loss_fn=task.loss_fn, activation_types=task.activation_types,
                              progress=False, check=False)
    assert direct.formula == via_task.history.get("unusable_formula", via_task.formula)
    assert direct.history["val_loss"] == via_task.history["val_loss"]
    pick = lambda r: [(x["seed"], x["formula"], x["val_loss"], x["chosen"]) for x in r.history["restarts"]]  # noqa: E731
    assert pick(direct) == pick(via_task)


def test_keywords_override_the_config_and_config_excludes_preset():
    x = torch.randn(64, 6)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    cfg = SearchConfig.paper(epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = grafs.search(model, (x, y), config=cfg, space=grafs.SearchSpace(**SMALL), progress=False,
                         arch_lr=5e-3, lr=2e-3, batch_size=16)
    assert (r.settings["epochs"], r.settings["arch_lr"], r.settings["batch_size"]) == (3, 5e-3, 16)
    assert "preset" not in r.settings
    with pytest.raises(GrafsError, match="a config or a preset, not both"):
        grafs.search(model, (x, y), config=cfg, preset="paper")
    with pytest.raises(GrafsError, match="config must be a grafs.SearchConfig"):
        grafs.search(model, (x, y), config={"epochs": 3})
    with pytest.raises(GrafsError, match="unknown SearchConfig fields"):
        entry.configure(cfg, "auto", {"arch_lrr": 1.0})
