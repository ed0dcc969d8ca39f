"""Built-in tasks: registry, offline loading, data shapes/dtypes/labels, determinism."""
import json
import os
import pickle
import random
import socket
import urllib.request

import numpy as np
import pytest
import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models import activation_sites
from grafs.tasks import TASKS, SearchConfig, Task, TrainConfig, get_task, list_tasks
from grafs.tasks import digits as digits_mod
from grafs.tasks import mnist1d as mnist1d_mod
from grafs.tasks import _skimage as skimage_data
from grafs.tasks import inr as inr_mod
from grafs.tasks import text as text_mod
from grafs.tasks import textures as textures_mod



SMALL = {"mnist1d": {"num_samples": 500}, "digits": {}, "text": {"max_chars": 20_000},
         "teacher": {"num_train": 64, "num_test": 32},
         "textures": {"train_per_class": 8, "test_per_class": 4, "width": 2},
         "inr": {"size": 16}}


@pytest.fixture(scope="module")
def mnist1d_task():
    return get_task("mnist1d")          # the standard 5000-sample MNIST-1D (~4 s, cached)


def test_registry_and_unknown_task():
    assert list_tasks() == ["digits", "inr", "mnist1d", "teacher", "text", "textures"] \
        == sorted(TASKS)
    with pytest.raises(GrafsError) as err:
        get_task("cifar10")
    msg = str(err.value)
    assert "cifar10" in msg and all(name in msg for name in ("digits", "mnist1d", "text"))
    assert isinstance(err.value, ValueError)
    with pytest.raises(GrafsError, match="seed"):
        get_task("digits", seed=-1)


def test_unknown_override_lists_accepted_options():
    with pytest.raises(GrafsError) as err:
        get_task("digits", colour="red")
    assert "colour" in str(err.value) and "width" in str(err.value)
    assert "epochs" in str(err.value)


def test_no_network_and_no_files_during_task_creation(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.chdir(tmp_path)           # mnist1d.get_dataset would write a pickle here
    # clear the in-process caches so the data are really produced under the patch
    mnist1d_mod._generate.cache_clear()
    digits_mod._load.cache_clear()
    text_mod._load.cache_clear()
    text_mod._full_corpus.cache_clear()
    textures_mod._load.cache_clear()
    inr_mod._load.cache_clear()
    skimage_data._load.cache_clear()
    for name in TASKS:
        task = get_task(name, **SMALL[name])
        assert len(task.train_x) > 0 and len(task.test_x) > 0
        assert task.make_model() is not None
    assert os.listdir(tmp_path) == []


def test_mnist1d_standard_data(mnist1d_task):
    t = mnist1d_task
    assert isinstance(t, Task) and t.name == "mnist1d"
    assert t.train_x.shape == (4000, 40) and t.test_x.shape == (1000, 40)
    assert t.train_x.dtype == torch.float32 and t.train_y.dtype == torch.int64
    assert t.train_y.min() == 0 and t.train_y.max() == 9
    assert set(t.test_y.tolist()) == set(range(10))
    # every class is represented about equally (500 generated per class)
    counts = torch.bincount(torch.cat([t.train_y, t.test_y]), minlength=10)
    assert counts.tolist() == [500] * 10
    allx = torch.cat([t.train_x, t.test_x])
    assert abs(allx.mean().item()) < 1e-3 and abs(allx.std().item() - 1) < 1e-3
    assert t.activation_types == (nn.ReLU,) and t.default_activation is nn.ReLU
    assert t.metric_name == "accuracy" and t.higher_is_better


def test_mnist1d_generator_is_deterministic_and_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(7)
    np_before = np.random.get_state()[1].copy()
    py_before = random.getstate()
    mnist1d_mod._generate.cache_clear()
    a = mnist1d_mod.load_mnist1d(num_samples=200)
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert random.getstate() == py_before
    mnist1d_mod._generate.cache_clear()
    b = mnist1d_mod.load_mnist1d(num_samples=200)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    c = mnist1d_mod.load_mnist1d(num_samples=200, data_seed=1)
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (160, 40) and a[2].shape == (40, 40)
    # returned tensors are fresh copies: mutating one does not touch the cache
    a[0].zero_()
    assert not torch.equal(mnist1d_mod.load_mnist1d(num_samples=200)[0], a[0])
    with pytest.raises(GrafsError):
        mnist1d_mod.load_mnist1d(num_samples=205)


def test_digits_data():
    t = get_task("digits")
    assert t.train_x.shape[1:] == (1, 8, 8) and t.train_x.dtype == torch.float32
    assert len(t.train_x) + len(t.test_x) == 1797
    assert abs(len(t.test_x) / 1797 - 0.2) < 0.01
    assert t.train_y.dtype == torch.int64
    assert t.train_y.min() == 0 and t.train_y.max() == 9
    # stratified: each class's test share is ~20 %
    tr = torch.bincount(t.train_y, minlength=10).double()
    te = torch.bincount(t.test_y, minlength=10).double()
    share = te / (tr + te)
    assert torch.all((share - 0.2).abs() < 0.02)
    assert abs(t.train_x.mean().item()) < 1e-4 and abs(t.train_x.std().item() - 1) < 1e-3
    # the split does not depend on the task seed (comparable results across seeds)
    t2 = get_task("digits", seed=3)
    assert torch.equal(t.test_x, t2.test_x) and torch.equal(t.train_y, t2.train_y)
    other = get_task("digits", split_seed=1)
    assert not torch.equal(t.test_y, other.test_y)
    # no test image appears in the training set
    flat_tr = {tuple(r.tolist()) for r in t.train_x.flatten(1)}
    dup = sum(tuple(r.tolist()) in flat_tr for r in t.test_x.flatten(1))
    assert dup <= 2          # the raw dataset itself contains a couple of duplicates


def test_text_data():
    t = get_task("text")
    V = len(text_mod.VOCAB)
    assert V == 96 and t.num_classes == 96
    assert t.train_x.dtype == torch.int64 and t.train_x.shape[1] == 64
    assert t.train_x.shape == t.train_y.shape and t.test_x.shape == t.test_y.shape
    n_chars = t.info["num_chars"]
    assert n_chars == 200_000
    assert len(t.train_x) == (180_000 - 1) // 64 and len(t.test_x) == (20_000 - 1) // 64
    assert int(t.train_x.min()) >= 0 and int(t.train_x.max()) < V
    # next-character targets, consecutive windows
    assert torch.equal(t.train_y[:, :-1], t.train_x[:, 1:])
    assert torch.equal(t.train_y[:-1, -1], t.train_x[1:, 0])
    text = text_mod.decode(t.train_x[0])
    assert text.startswith('The "assert" statement')
    assert text_mod.decode(text_mod.encode("a\u201cb\u201d\t")) == 'a"b"    '
    # position split: the test text is the corpus tail
    corpus = text_mod.build_corpus(200_000)
    assert text_mod.decode(t.test_x[0]) == corpus[180_000:180_064]
    # deduplicated paragraphs: no paragraph of >= 80 chars occurs twice
    paras = [p.strip() for p in corpus.split("\n\n") if len(p.strip()) >= 80]
    assert len(paras) == len(set(paras))
    assert t.metric_name == "loss_per_char" and not t.higher_is_better
    assert t.activation_types == (nn.GELU,) and t.default_activation is nn.GELU
    with pytest.raises(GrafsError):
        get_task("text", block_size=1)


def test_overrides_reach_the_right_configs():
    t = get_task("digits", epochs=4, lr=0.01, arch_lr=0.02, eval_batch_size=32)
    assert t.search_config.epochs == 4 and t.eval_config.epochs == 4
    assert t.search_config.lr == 0.01 and t.eval_config.lr == 0.01
    assert t.search_config.arch_lr == 0.02
    assert t.eval_config.batch_size == 32 and t.search_config.batch_size == 64
    t2 = get_task("digits", search_epochs=2)
    assert t2.search_config.epochs == 2 and t2.eval_config.epochs == 20
    assert t2.search_config.shrink_start_epoch == 1      # kept valid for a short search
    assert t2.search_config.warmstart_epochs == 1
    t3 = get_task("digits", epochs=1)                     # e.g. a quick evaluation run
    assert (t3.search_config.warmstart_epochs, t3.search_config.shrink_start_epoch) == (0, 0)
    assert t3.eval_config.epochs == 1
    with pytest.raises(GrafsError, match="shrink_start_epoch"):
        get_task("digits", search_epochs=4, search_shrink_start_epoch=4)
    with pytest.raises(GrafsError, match="factory"):
        t.make_model(nn.ReLU())
    with pytest.raises(GrafsError, match="optimizer"):
        get_task("digits", optimizer="rmsprop")


def test_models_of_tasks_use_declared_activation_types():
    expected_sites = {"mnist1d": 3, "digits": 7, "text": 3}
    for name, n in expected_sites.items():
        t = get_task(name, **SMALL[name])
        model = t.make_model()
        assert len(activation_sites(model, t.activation_types)) == n
        marker = type("Marker", (nn.Module,), {"forward": lambda self, x: x})
        custom = t.make_model(marker)
        assert activation_sites(custom, t.activation_types) == []
        assert len(activation_sites(custom, marker)) == n
        xb = t.train_x[:2]
        out = model(xb)
        expect = (2, 10) if name != "text" else (2, 64, 96)
        assert out.shape == expect


def test_make_model_is_deterministic_and_does_not_touch_global_rng():
    t = get_task("digits")
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a, b = t.make_model(), t.make_model()
    assert torch.equal(torch.random.get_rng_state(), before)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = get_task("digits", seed=1).make_model()
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    d = t.make_model(seed=1)
    assert torch.equal(c.conv1.weight, d.conv1.weight)


def test_search_split_is_deterministic_disjoint_and_covers_train():
    t = get_task("digits")
    (xa, ya), (xv, yv) = t.search_split()
    assert len(xa) == round(0.75 * len(t.train_x)) and len(xa) + len(xv) == len(t.train_x)
    (xa2, _), _ = t.search_split()
    assert torch.equal(xa, xa2)
    (xa3, _), _ = get_task("digits", seed=1).search_split()
    assert not torch.equal(xa, xa3)
    rows = lambda x: sorted(tuple(r.tolist()) for r in x.flatten(1))
    assert rows(torch.cat([xa, xv])) == rows(t.train_x)
    assert torch.equal(t.split("search_val")[0], xv)
    with pytest.raises(GrafsError, match="split"):
        t.split("validation")


def test_batches_cover_every_example_once():
    t = get_task("digits")
    seen = torch.cat([y for _, y in t.batches("test", 50, shuffle=True, seed=1)])
    assert torch.equal(seen.sort().values, t.test_y.sort().values)
    sizes = [len(x) for x, _ in t.batches("test", 50, drop_last=True)]
    assert sizes == [50] * (len(t.test_x) // 50)
    loader = t.loader("train", 100)
    xb, yb = next(iter(loader))
    assert xb.shape == (100, 1, 8, 8) and yb.shape == (100,)


def test_summary_is_json_serialisable_and_tasks_pickle():
    for name in TASKS:
        task = get_task(name, **SMALL[name])
        clone = pickle.loads(pickle.dumps(task))
        assert torch.equal(clone.train_x, task.train_x)
        a, b = clone.make_model(), task.make_model()
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        s = task.summary()
        d = json.loads(json.dumps(s))
        assert d["name"] == name
        assert SearchConfig.from_dict(d["search_config"]) == get_task(
            name, **SMALL[name]).search_config
        assert TrainConfig.from_dict(d["eval_config"]).epochs == d["eval_config"]["epochs"]
