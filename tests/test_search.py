"""GRAFS search loop: determinism, resume, warm-start, gradient hygiene, NaN handling, results."""
import copy
import json

import pytest
import torch
from torch import nn

import grafs
from grafs.searching.loop import search as search_once
from grafs.compiler.eager import run_expr
from grafs.errors import GrafsError, SearchError
from grafs.runtime.space import SearchSpace
from grafs.searching import Act, SearchSite, replace_activations, split_dataset
from grafs.searching.loop import search
from grafs.searching.data import Batches
from grafs.searching.checkpoint import Interrupted

SPACE = dict(template="B(U(B(U(x), U(x))), U(x))",
             unary=["identity", "relu", "gelu", "silu", "tanh", "square", "mul_gamma"],
             binary=["add", "mul", "mix", "max"])


def data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = ((x[:, 0] * x[:, 1] + 0.5 * x[:, 2]) > 0).long()
    return x, y


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def run(**kw):
    args = dict(space=SearchSpace(**SPACE), epochs=5, seed=1, batch_size=32, progress=False,
                arch_lr=3e-2)
    args.update(kw)
    return search(model(), data(), **args)


def test_search_returns_parseable_formula_and_history():
    r = run()
    e = grafs.parse(r.formula)
    assert str(e) == r.formula
    h = r.history
    assert h["epochs"] == [0, 1, 2, 3, 4]
    assert h["num_active"][-1] == 6  # fully discrete at the last epoch
    assert len(h["dropped"]) == SearchSpace(**SPACE).num_ops - 6
    assert all(len(a) == 6 for a in h["alpha"])
    assert h["formula"][-1] == r.formula
    assert all(isinstance(v, float) for v in h["train_loss"] + h["val_loss"])
    # the compiled activation computes the formula
    x = torch.randn(50)
    torch.testing.assert_close(r.activation(x), grafs.compile(r.formula, backend="eager")(x))


def test_same_seed_same_formula_and_history():
    a, b = run(), run()
    assert a.formula == b.formula
    assert a.history["alpha"] == b.history["alpha"]
    assert a.history["val_loss"] == b.history["val_loss"]


def test_resume_equals_uninterrupted(tmp_path):
    full = run(checkpoint_dir=tmp_path / "full")
    with pytest.raises(Interrupted):
        run(checkpoint_dir=tmp_path / "cut", _stop_after_epoch=2)
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2
    resumed = run(checkpoint_dir=tmp_path / "cut", resume=tmp_path / "cut")
    assert resumed.formula == full.formula
    for key in ("alpha", "gamma", "train_loss", "val_loss", "dropped", "num_active", "formula"):
        assert resumed.history[key] == full.history[key], key


def test_more_arch_steps_per_weight_step(tmp_path):
    """arch_steps=2: two arch steps (two validation batches) per weight step, deterministic,
    resumable, recorded in the settings; α moves further than with one."""
    one, two, again = run(), run(arch_steps=2), run(arch_steps=2)
    assert two.settings["arch_steps"] == 2 and "arch_steps" not in one.settings
    assert two.history["alpha"] == again.history["alpha"] and two.formula == again.formula
    assert two.history["alpha"] != one.history["alpha"]
    with pytest.raises(Interrupted):
        run(arch_steps=2, checkpoint_dir=tmp_path / "cut", _stop_after_epoch=2)
    resumed = run(arch_steps=2, checkpoint_dir=tmp_path / "cut", resume=tmp_path / "cut")
    assert resumed.history["alpha"] == two.history["alpha"]
    for bad in (0, 1.5, "2"):
        with pytest.raises(GrafsError, match="arch_steps"):
            run(arch_steps=bad)
    from grafs.searching.config import SearchConfig
    with pytest.raises(GrafsError, match="arch_steps"):
        SearchConfig(arch_steps=0)


def test_arch_batch_size_sets_the_validation_batches_of_the_arch_steps(tmp_path):
    """arch_batch_size=60: every arch step's validation batch has 60 examples (the 60
    validation examples of a 240-example 75/25 split: one full batch per step), the training
    batches keep batch_size; deterministic, resumable, recorded in the settings."""
    seen = []

    def loss_fn(out, y):
        seen.append(len(y))
        return nn.functional.cross_entropy(out, y)

    big = run(arch_batch_size=60, loss_fn=loss_fn)
    assert big.settings["arch_batch_size"] == 60
    assert set(seen) == {32, 60, 20}      # 180 training examples: batches of 32 and a last 20
    seen.clear()
    one = run(loss_fn=loss_fn)
    assert "arch_batch_size" not in one.settings and 60 not in seen and len(seen) > 0
    assert run(arch_batch_size=32).history["alpha"] == one.history["alpha"]  # = batch_size
    assert big.history["alpha"] != one.history["alpha"]
    assert run(arch_batch_size=60).history["alpha"] == big.history["alpha"]
    with pytest.raises(Interrupted):
        run(arch_batch_size=60, checkpoint_dir=tmp_path / "cut", _stop_after_epoch=2)
    resumed = run(arch_batch_size=60, checkpoint_dir=tmp_path / "cut", resume=tmp_path / "cut")
    assert resumed.history["alpha"] == big.history["alpha"]
    with pytest.raises(GrafsError, match="other settings"):
        run(resume=tmp_path / "cut")
    for bad in (0, 1.5, "64", True):
        with pytest.raises(GrafsError, match="arch_batch_size"):
            run(arch_batch_size=bad)
    x, y = data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[200:], y[200:]),
                                         batch_size=8)
    with pytest.raises(GrafsError, match="DataLoader brings its own batch size"):
        search(model(), (x[:200], y[:200]), loader, space=SearchSpace(**SPACE), epochs=3,
               arch_batch_size=16, progress=False)
    from grafs.searching.config import SearchConfig
    with pytest.raises(GrafsError, match="arch_batch_size"):
        SearchConfig(arch_batch_size=0)


def test_resume_with_other_settings_is_refused(tmp_path):
    with pytest.raises(Interrupted):
        run(checkpoint_dir=tmp_path, _stop_after_epoch=1)
    with pytest.raises(GrafsError, match=r"other settings \(epochs: 5 there, 6 here\); resume with"):
        run(resume=tmp_path, epochs=6)


def test_resume_of_another_models_checkpoint_is_a_clear_error(tmp_path):
    """The same settings, another network: a GrafsError naming the file and torch's mismatch."""
    with pytest.raises(Interrupted):
        run(checkpoint_dir=tmp_path, _stop_after_epoch=1)
    torch.manual_seed(0)
    wider = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 2))
    args = dict(space=SearchSpace(**SPACE), epochs=5, seed=1, batch_size=32, progress=False,
                arch_lr=3e-2, resume=tmp_path)
    with pytest.raises(GrafsError, match=r"cannot resume from .*checkpoint.pt: it was written by a "
                                         r"search of another model .*size mismatch"):
        search(wider, data(), **args)
    assert run(resume=tmp_path).formula == run().formula        # the checkpoint itself still resumes


def test_resume_with_another_optimizer_or_scheduler_is_refused(tmp_path):
    """The checkpoint's optimizer state would replace the new one's: another learning rate was
    silently dropped (the resumed run was the plain resume) and another optimizer failed inside
    torch; both are refused with what each search has, as is a scheduler added or removed."""
    with pytest.raises(Interrupted):
        run(checkpoint_dir=tmp_path, _stop_after_epoch=1)
    for kw, what in ((dict(optimizer=lambda p: torch.optim.Adam(p, lr=0.5)), r"lr=0\.5"),
                     (dict(optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)), "SGD"),
                     (dict(scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 2)), "StepLR")):
        with pytest.raises(GrafsError, match=r"cannot resume from .*another weight optimizer or "
                                             r"scheduler \(Adam\(.*lr=0\.001.*no scheduler; this "
                                             rf"search has .*{what}"):
            run(resume=tmp_path, **kw)
    # the same optimizer spelt out (and another implementation of it) resumes
    same = run(resume=tmp_path, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3, foreach=False))
    assert same.formula == run().formula


def test_an_fp16_resume_keeps_the_loss_scale(tmp_path):
    """fp16: the weight step's loss scaler is in the checkpoint (it restarted at 65536 on
    resume, skipping steps, so the resumed run left the uninterrupted one)."""
    big = lambda out, y: 3e4 * nn.functional.cross_entropy(out.float(), y)
    full = run(amp="fp16", loss_fn=big, checkpoint_dir=tmp_path / "full")
    with pytest.raises(Interrupted):
        run(amp="fp16", loss_fn=big, checkpoint_dir=tmp_path / "cut", _stop_after_epoch=2)
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["w_scaler"]["scale"] < 65536.0
    resumed = run(amp="fp16", loss_fn=big, checkpoint_dir=tmp_path / "cut", resume=tmp_path / "cut")
    for key in ("alpha", "gamma", "train_loss", "val_loss", "formula"):
        assert resumed.history[key] == full.history[key], key


def test_data_that_gives_no_batch_and_bad_sizes_are_clear_errors():
    """An empty loader, or one with drop_last and fewer examples than a batch, stopped with a
    bare StopIteration (validation) or trained nothing and returned a formula (training)."""
    from torch.utils.data import DataLoader, TensorDataset
    x, y = data()
    few = DataLoader(TensorDataset(x[:5], y[:5]), batch_size=8, drop_last=True)
    args = dict(space=SearchSpace(**SPACE), epochs=5, seed=1, batch_size=32, progress=False)
    with pytest.raises(GrafsError, match="val_data gives no batch"):
        search(model(), (x, y), few, **args)
    with pytest.raises(GrafsError, match="train_data gives no batch"):
        search(model(), few, (x, y), **args)
    for kw, name in ((dict(batch_size=0), "batch_size"), (dict(batch_size=-1), "batch_size"),
                     (dict(max_steps_per_epoch=0), "max_steps_per_epoch"),
                     (dict(train_fraction=1.5), "train_fraction"),
                     (dict(train_fraction=-0.5), "train_fraction"),
                     (dict(epochs=2.0), "epochs must be an int"), (dict(epochs=True), "epochs must be an int")):
        with pytest.raises(GrafsError, match=name):
            run(**kw)


def test_batches_that_are_not_input_target_pairs_are_clear_errors():
    """Dict items, (x, y, w) items and an IterableDataset failed deep inside the loop (KeyError 0,
    too many values to unpack, no len()); now the error says what arrived and what to do."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
    x, y = data()

    class Dicts(Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"input": x[i], "label": y[i]}

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))
    args = dict(space=SearchSpace(**SPACE), epochs=5, seed=1, batch_size=32, progress=False)
    with pytest.raises(GrafsError, match=r"train_data: each item must be an \(inputs, targets\) "
                                         r"pair, got a dict with keys \['input', 'label'\]"):
        search(model(), Dicts(), (x, y), **args)
    with pytest.raises(GrafsError, match=r"val_data: each batch must be an \(inputs, targets\) "
                                         r"pair, got a list of 3"):
        search(model(), (x, y), DataLoader(TensorDataset(x, y, y), batch_size=16), **args)
    with pytest.raises(GrafsError, match="train_data is an IterableDataset"):
        search(model(), Stream(), (x, y), **args)
    with pytest.raises(GrafsError, match="train_data is a DataLoader without a length"):
        search(model(), DataLoader(Stream(), batch_size=16), (x, y), **args)


def test_a_last_batch_of_one_joins_the_batch_before():
    """With 44 examples the 75/25 split leaves 33 for training: batches of 32 and 1, and a
    BatchNorm model failed on the lone example ("Expected more than 1 value per channel")."""
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    x, y = data(44)
    sizes = []

    def loss_fn(out, t):
        sizes.append(len(t))
        return nn.functional.cross_entropy(out, t)
    r = search(bn, (x, y), space=SearchSpace(**SPACE), epochs=3, seed=1, batch_size=32,
               progress=False, loss_fn=loss_fn)
    assert r.formula and 1 not in sizes and 33 in sizes
    b = Batches((x[:33], y[:33]), 32, 0, 0, "train_data")
    assert len(b) == 1 and [len(xb) for xb, _ in b.epoch(0)] == [33]
    assert [len(xb) for xb, _ in Batches((x[:34], y[:34]), 32, 0, 0, "d").epoch(0)] == [32, 2]
    assert [len(xb) for xb, _ in Batches((x[:1], y[:1]), 32, 0, 0, "d").epoch(0)] == [1]


@pytest.mark.parametrize("damage", ["no a_opt", "rng empty", "epoch beyond", "epoch negative",
                                    "history a list"])
def test_a_damaged_checkpoint_is_refused_saying_so(tmp_path, damage):
    """Damaged checkpoints failed with KeyError 'torch' or AttributeError, were blamed on
    another model, or (an epoch past the end) resumed to a mid-run formula."""
    with pytest.raises(Interrupted):
        run(checkpoint_dir=tmp_path, _stop_after_epoch=1)
    p = tmp_path / "checkpoint.pt"
    ck = torch.load(p, weights_only=True)
    {"no a_opt": lambda: ck.pop("a_opt"), "rng empty": lambda: ck.update(rng={}),
     "epoch beyond": lambda: ck.update(epoch=99), "epoch negative": lambda: ck.update(epoch=-5),
     "history a list": lambda: ck.update(history="[1, 2]")}[damage]()
    torch.save(ck, p)
    with pytest.raises(GrafsError, match=r"checkpoint.pt.*it is damaged"):
        run(resume=tmp_path)


def test_a_non_finite_validation_loss_is_named_as_such():
    """The arch step runs first: a NaN validation loss was reported as a training loss, with a
    formula arg-maxed from NaN α."""
    calls = []

    def nan_on_the_ninth_validation_loss(out, y):
        calls.append(1)
        loss = nn.functional.cross_entropy(out, y)
        # calls alternate arch (odd) and weight (even) within an epoch's steps
        return loss * float("nan") if len(calls) == 17 else loss
    with pytest.raises(SearchError, match=r"non-finite validation loss \(nan\) at epoch 2, step 2; "
                                          r"leading formula: none \(α or γ is not finite\)"):
        run(loss_fn=nan_on_the_ninth_validation_loss)


class Spy(torch.optim.SGD):
    """Records the gradients the weight optimizer sees at each step."""
    seen: list = []

    def step(self, closure=None):
        Spy.seen.append([None if p.grad is None else p.grad.clone() for p in self.param_groups[0]["params"]])
        return super().step(closure)


def test_warmstart_weight_step_uses_original_activation_and_clean_grads():
    """During warm-start the weight gradient must be exactly the gradient of the training loss
    of the ORIGINAL network: no arch-step gradient leaks in, no cell involved."""
    Spy.seen = []
    m0 = model()
    init = copy.deepcopy(m0.state_dict())
    x, y = data()
    (xt, yt), (xv, yv) = split_dataset((x, y), 0.75, seed=1)
    search(m0, (xt, yt), (xv, yv), space=SearchSpace(**SPACE), epochs=3, warmstart_epochs=1,
           seed=1, batch_size=32, progress=False, max_steps_per_epoch=1,
           optimizer=lambda ps: Spy(ps, lr=0.1))
    ref = model()
    ref.load_state_dict(init)
    xb, yb = next(iter(Batches((xt, yt), 32, 1, 0, "t").epoch(0)))
    nn.functional.cross_entropy(ref(xb), yb).backward()
    for got, p in zip(Spy.seen[0], ref.parameters()):
        torch.testing.assert_close(got, p.grad)


def test_sites_switch_between_original_and_cell():
    calls = {"orig": 0, "cell": 0}
    m = model()
    space = SearchSpace(**SPACE)
    x, y = data()

    class CountingReLU(nn.ReLU):
        def forward(self, t):
            calls["orig"] += 1
            return super().forward(t)

    m[1], m[3] = CountingReLU(), CountingReLU()
    orig_forward = grafs.runtime.cell.RelaxedCell.forward

    def counting(self, t, weights=None):
        calls["cell"] += 1
        return orig_forward(self, t, weights)

    grafs.runtime.cell.RelaxedCell.forward = counting
    try:
        search(m, (x, y), space=space, epochs=2, warmstart_epochs=1, seed=0, batch_size=32,
               progress=False, max_steps_per_epoch=2)
    finally:
        grafs.runtime.cell.RelaxedCell.forward = orig_forward
    # epoch 0 (warm): 2 steps x 2 sites with the original activation, the rest through the cell
    assert calls["orig"] == 2 * 2
    assert calls["cell"] > 0


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    state = {"epoch_calls": 0}

    def loss(out, y):
        state["epoch_calls"] += 1
        value = nn.functional.cross_entropy(out, y)
        return value * float("nan") if state["epoch_calls"] > 40 else value

    with pytest.raises(SearchError, match=r"non-finite .* loss .* epoch \d+.*leading formula") as err:
        run(loss_fn=loss, checkpoint_dir=tmp_path)
    assert "checkpoint" in str(err.value)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # last good one is intact
    assert ck["epoch"] >= 0 and json.loads(ck["history"])["formula"]


def test_result_save_load_roundtrip(tmp_path):
    r = run(epochs=3)
    r.save(tmp_path / "res")
    back = grafs.SearchResult.load(tmp_path / "res")
    assert back.formula == r.formula and back.history == json.loads(json.dumps(r.history))
    assert set(back.cell_state) == set(r.cell_state)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_text("{not json")
    with pytest.raises(GrafsError, match="not a grafs search result"):
        grafs.SearchResult.load(tmp_path / "bad")


def test_replace_activations_counts_and_placeholder():
    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Sequential(nn.GELU(), Act("silu(x)")), nn.Tanh())
    n = replace_activations(m, lambda: nn.Identity(), types=(nn.ReLU, nn.GELU))
    assert n == 3  # ReLU, GELU and the grafs.Act placeholder; Tanh not asked for
    assert isinstance(m[3], nn.Tanh)
    with pytest.raises(GrafsError, match="no activation modules"):
        replace_activations(nn.Linear(2, 2), lambda: nn.Identity())
    x = torch.randn(4)
    torch.testing.assert_close(Act("silu(x)")(x), nn.functional.silu(x))


def test_bad_arguments():
    with pytest.raises(GrafsError):
        run(epochs=0)
    with pytest.raises(GrafsError):
        run(warmstart_epochs=5)
    with pytest.raises(GrafsError, match="Dataset"):
        search(model(), [1, 2, 3], progress=False)


@pytest.mark.parametrize("name,kwargs,shape,sites", [
    ("resnet20", {}, (2, 3, 32, 32), 19),
    ("vit_tiny", {}, (2, 3, 32, 32), 4),
    ("mini_gpt", {"vocab_size": 65, "block_size": 32}, None, 3),
])
def test_replace_activations_on_paper_models(name, kwargs, shape, sites):
    """One shared relaxed cell replaces every activation site of the paper's models."""
    from grafs.models import get_model
    torch.manual_seed(0)
    m = get_model(name, **kwargs)
    cell = SearchSpace.grafs().relax("eager", seed=0)
    state = {"use_cell": True}
    n = replace_activations(m, lambda orig: SearchSite(orig, cell, state), (nn.ReLU, nn.GELU))
    assert n == sites
    assert not any(isinstance(mod, (nn.ReLU, nn.GELU)) and not isinstance(p, SearchSite)
                   for p in m.modules() for mod in p.children())
    x = torch.randn(*shape) if shape else torch.randint(0, 65, (2, 32))
    out = m(x)
    out.float().sum().backward()
    assert all(a.grad is not None for a in cell.alpha)
    # the cell's α and γ are registered once, however many sites share it
    ids = [id(p) for p in m.parameters()]
    assert len(ids) == len(set(ids)) and sum(id(a) in ids for a in cell.alpha) == 6


def test_search_accepts_dataloaders_and_datasets():
    from torch.utils.data import DataLoader, TensorDataset
    (xt, yt), (xv, yv) = split_dataset(data(), 0.75, seed=0)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=False)
    r1 = search(model(), loader, TensorDataset(xv, yv), space=SearchSpace(**SPACE), epochs=3,
                seed=0, progress=False)
    r2 = search(model(), TensorDataset(xt, yt), DataLoader(TensorDataset(xv, yv), batch_size=32),
                space=SearchSpace(**SPACE), epochs=3, seed=0, progress=False)
    for r in (r1, r2):
        grafs.parse(r.formula)
        assert r.history["num_active"][-1] == 6


# ------------------------------------------------------------------ devices, precision, syncs
def test_search_under_bf16_autocast_keeps_the_cell_in_fp32():
    """amp="bf16": the network runs under autocast, the cell's math stays fp32 (its output has
    the input's dtype), and the search completes with finite losses."""
    r = run(amp="bf16", epochs=3)
    assert r.settings["amp"] == "bf16"
    assert all(torch.isfinite(torch.tensor(v)) for v in r.history["train_loss"])
    cell = SearchSpace(**SPACE).relax("lean", seed=0)
    x = torch.randn(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y32 = cell(x, weights=cell.sample_weights().detach())
        y16 = cell(x.bfloat16(), weights=cell.sample_weights().detach())
    assert y32.dtype == torch.float32 and y16.dtype == torch.bfloat16


def test_bad_amp_and_device_are_clear_errors():
    with pytest.raises(GrafsError, match="amp"):
        run(amp="int8")
    from grafs.searching import resolve_device
    with pytest.raises(GrafsError, match="unknown device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(GrafsError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


class _CountSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.n += 1
        return func(*args, **(kwargs or {}))


def test_search_passes_read_nothing_back_to_the_host():
    """The two passes of a search step (batched samples, cell at every site, forward and
    backward) have no .item()-style dispatch. (The optimizers' own CPU step counters are read
    back by torch on the CPU; that is no device sync and is not counted here.)"""
    net = model()
    cell = SearchSpace(**SPACE).relax("lean", seed=0)
    state = {"use_cell": True}
    n = replace_activations(net, lambda o: SearchSite(o, cell, state))
    x, y = data(64)
    for counted in (False, True):
        with _CountSyncs() as c:
            cell.refresh_samples(n)           # arch pass: α and γ get gradients
            nn.functional.cross_entropy(net(x[:32]), y[:32]).backward()
            for p in cell.arch_parameters():
                p.requires_grad_(False)
            cell.refresh_samples(n)           # weight pass: α and γ frozen
            nn.functional.cross_entropy(net(x[32:]), y[32:]).backward()
            for p in cell.arch_parameters():
                p.requires_grad_(True)
            cell.clear_samples()
        if counted:
            assert c.n == 0
    assert all(p.grad is not None for p in cell.arch_parameters())


def test_search_runs_to_a_discrete_cell_with_nothing_left_to_learn():
    """Once one op per hole is left and none of them has a γ, the arch step has no parameter
    to train (the Dirichlet samples are constant 1): the step must skip it, not fail."""
    sp = SearchSpace("B(U(x), U(x))", unary=["relu", "gelu"], binary=["add", "max"])
    r = search(model(), data(), space=sp, epochs=3, seed=0, batch_size=32, progress=False)
    assert r.history["num_active"][-1] == 3
    grafs.parse(r.formula)


def stepper(net, w_opt, a_opt, **kw):
    """A search step (grafs.searching.step.Stepper) on ``net`` with a lean cell at its ReLUs:
    (stepper, weights, arch parameters); ``w_opt``/``a_opt`` make the optimizers."""
    from grafs.searching.step import Stepper
    cell = SearchSpace(**SPACE).relax("lean", seed=0)
    state = {"use_cell": True}
    n = replace_activations(net, lambda o: SearchSite(o, cell, state))
    arch = list(cell.arch_parameters())
    ids = {id(p) for p in arch}
    ws = [p for p in net.parameters() if id(p) not in ids]
    return (Stepper(net, cell, state, ws, arch, w_opt(ws), a_opt(arch), None,
                     nn.functional.cross_entropy, torch.device("cpu"), n_sites=n, **kw), ws, arch)


def test_arch_steps_keep_accumulated_weight_gradients():
    """grad_accumulation: the weight gradients summed over micro-steps survive the arch steps
    in between (the weights are frozen during arch steps, not their grads cleared)."""
    net = model()
    ref = copy.deepcopy(net)
    st, ws, _ = stepper(net, lambda ws: torch.optim.SGD(ws, 0.1),
                        lambda arch: torch.optim.Adam(arch, 1e-3, betas=(0.5, 0.999)),
                        grad_accumulation=2)
    x, y = data(96)
    batches = [(x[:32], y[:32]), (x[32:64], y[32:64])]
    for xb, yb in batches:   # warm: the weight steps use the original ReLU, as `ref` does
        st.step(xb, yb, x[64:], y[64:], warm=True, update=False)
    for xb, yb in batches:
        (nn.functional.cross_entropy(ref(xb), yb) / 2).backward()
    for p, q in zip(ws, ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_warns_when_ops_are_dropped_before_alpha_moved():
    from grafs.errors import GrafsWarning
    with pytest.warns(GrafsWarning, match="about uniform"):
        r = run(arch_lr=1e-7)              # α cannot move: the first drops are random
    assert "about uniform" in r.history["warnings"][0]


def test_no_unlearned_warning_once_alpha_has_spread():
    import warnings
    from grafs.errors import GrafsWarning
    from grafs.searching.searcher import warn_if_unlearned
    cell = SearchSpace(**SPACE).relax(mode="eager", seed=0)
    with torch.no_grad():
        for a in cell.alpha:
            a.copy_(torch.linspace(-1, 1, a.numel()))
    history: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", GrafsWarning)
        warn_if_unlearned(cell, 2, history)
    assert "warnings" not in history


@pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")    # a tiny search
def test_a_normalised_search_keeps_its_formula_without_the_op_constants_too():
    """history['unscaled_formula']: the same ops as the found formula, without the
    normalisation constants (the gain can help or hurt a network trained from scratch)."""
    import grafs
    from grafs.runtime.normalize import op_scale
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x[:, :1].tanh()
    sp = SearchSpace("U(x)", unary=["relu", "tanh", "gelu"], binary=["add"], normalize=True)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    r = search_once(net, (x, y), space=sp, epochs=3, seed=0, batch_size=16, shrink_start=1,
                     loss_fn=torch.nn.functional.mse_loss, progress=False)
    op = r.formula.split("*")[1].split("(")[0]
    assert r.history["unscaled_formula"] == f"{op}(x)"
    z = torch.linspace(-3, 3, 31, dtype=torch.float64)
    torch.testing.assert_close(run_expr(grafs.parse(r.formula), z),
                               float(r.formula.split("*")[0]) * run_expr(grafs.parse(f"{op}(x)"), z))
    assert abs(float(r.formula.split("*")[0]) - op_scale(op, sp.ell)) < 1e-6
    plain = search_once(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(),
                                             torch.nn.Linear(8, 1)), (x, y),
                         space=SearchSpace("U(x)", unary=["relu", "tanh"], binary=["add"]),
                         epochs=2, seed=0, batch_size=16, progress=False,
                         loss_fn=torch.nn.functional.mse_loss)
    assert "unscaled_formula" not in plain.history


def test_single_level_step_is_one_pass_with_both_gradients():
    """single_level: one forward/backward on the training batch; the weight and the arch
    optimizer each step once on that pass's gradients, equal to a reference computed by hand
    from the same Dirichlet sample."""
    net = model()
    st, ws, arch = stepper(net, lambda ws: torch.optim.SGD(ws, 1.0),
                           lambda arch: torch.optim.SGD(arch, 1.0), single_level=True)
    ref_net = copy.deepcopy(net)
    n = st.n_sites
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    x, y = data(64)
    before_w = [p.detach().clone() for p in ws]
    before_a = [p.detach().clone() for p in arch]
    # the reference: the same network and sample, gradients by autograd
    ref_cell = next(m.cell for m in ref_net.modules() if isinstance(m, SearchSite))
    ref_arch = list(ref_cell.arch_parameters())
    ref_ws = [p for p in ref_net.parameters() if id(p) not in {id(q) for q in ref_arch}]
    torch.manual_seed(5)
    ref_cell.refresh_samples(n)
    loss = nn.functional.cross_entropy(ref_net(x), y)
    grads = torch.autograd.grad(loss, ref_ws + ref_arch, allow_unused=True)
    torch.manual_seed(5)
    out, got = st.step(x, y, None, None, warm=False)
    assert len(calls) == 1                                   # one pass, no validation batch
    torch.testing.assert_close(got, loss.detach())
    for p, b, g in zip(ws + arch, before_w + before_a, grads):
        g = torch.zeros_like(b) if g is None else g
        torch.testing.assert_close(p.detach(), b - g)        # SGD(lr=1): p ← p − ∂loss/∂p
    assert any(not torch.equal(p, b) for p, b in zip(arch, before_a))
    assert all(p.grad is None for p in ws + arch)            # both optimizers zeroed


def test_single_level_search_runs_half_the_passes_and_is_recorded(tmp_path):
    """A single-level search: one forward per step after warm start (the bilevel search
    runs two), deterministic and resumable, recorded in the settings; refused with
    arch_steps > 1 and validated in SearchConfig."""
    def passes(**kw):
        net, calls = model(), []
        net.register_forward_hook(lambda *a: calls.append(1))
        r = search(net, data(), space=SearchSpace(**SPACE), epochs=5, seed=1, batch_size=32,
                   progress=False, arch_lr=3e-2, warmstart_epochs=1, **kw)
        return r, len(calls)
    two, n_two = passes()
    one, n_one = passes(single_level=True)
    steps = len(data()[0]) * 3 // 4 // 32 + 1          # 180 training rows → 6 batches an epoch
    assert n_two - n_one == 4 * steps                    # 4 non-warm epochs, one pass saved each
    assert one.settings["single_level"] is True and "single_level" not in two.settings
    assert one.history["alpha"] != two.history["alpha"]
    again = run(single_level=True, warmstart_epochs=1)
    assert again.formula == run(single_level=True, warmstart_epochs=1).formula
    with pytest.raises(Interrupted):
        run(single_level=True, checkpoint_dir=tmp_path / "cut", _stop_after_epoch=2)
    resumed = run(single_level=True, checkpoint_dir=tmp_path / "cut", resume=tmp_path / "cut")
    assert resumed.history["alpha"] == run(single_level=True).history["alpha"]
    with pytest.raises(GrafsError, match="single_level"):
        run(single_level=True, arch_steps=2)
    with pytest.raises(GrafsError, match="single_level"):
        run(single_level=1)
    from grafs.searching.config import SearchConfig
    with pytest.raises(GrafsError, match="single_level"):
        SearchConfig(single_level=True, arch_steps=2)
    with pytest.raises(GrafsError, match="single_level"):
        SearchConfig(single_level="yes")


def test_single_level_accumulates_arch_gradients_over_micro_steps():
    """single_level with grad_accumulation=2: α's gradients, like the weights', are summed
    over the micro-steps (each scaled by 1/2) and applied once, at the update step."""
    net = model()
    st, ws, arch = stepper(net, lambda ws: torch.optim.SGD(ws, 1.0),
                           lambda arch: torch.optim.SGD(arch, 1.0), single_level=True,
                           grad_accumulation=2)
    ref_net = copy.deepcopy(net)
    ref_cell = next(m.cell for m in ref_net.modules() if isinstance(m, SearchSite))
    ref_arch = list(ref_cell.arch_parameters())
    ref_ws = [p for p in ref_net.parameters() if id(p) not in {id(q) for q in ref_arch}]
    x, y = data(64)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    before = [p.detach().clone() for p in ws + arch]
    total = [torch.zeros_like(b) for b in before]
    for i, (xb, yb) in enumerate(batches):
        torch.manual_seed(10 + i)
        ref_cell.refresh_samples(st.n_sites)
        loss = nn.functional.cross_entropy(ref_net(xb), yb) / 2
        for t, g in zip(total, torch.autograd.grad(loss, ref_ws + ref_arch, allow_unused=True)):
            if g is not None:
                t += g
        torch.manual_seed(10 + i)
        st.step(xb, yb, None, None, warm=False, update=i == 1)
        if i == 0:   # a micro-step: nothing applied, both kinds of gradient kept
            assert all(torch.equal(p, b) for p, b in zip(ws + arch, before))
            assert all(p.grad is not None for p in arch[:-1])
    for p, b, g in zip(ws + arch, before, total):
        torch.testing.assert_close(p.detach(), b - g)
    assert any(not torch.equal(p, b) for p, b in zip(arch, before[len(ws):]))
    assert all(p.grad is None for p in ws + arch)


def test_single_level_search_runs_to_a_discrete_cell_under_fp16():
    """single_level with fp16 loss scaling: the arch optimizer steps through the weights'
    GradScaler, down to a discrete cell whose α gets no gradient at all."""
    sp = SearchSpace("B(U(x), U(x))", unary=["relu", "gelu"], binary=["add", "max"])
    r = search(model(), data(), space=sp, epochs=3, seed=0, batch_size=32, progress=False,
               single_level=True, amp="fp16", cell_mode="eager", max_steps_per_epoch=3)
    assert r.history["num_active"][-1] == 3 and r.settings["single_level"] is True
    grafs.parse(r.formula)


def test_single_level_fp16_step_with_no_arch_gradient_and_a_non_fused_optimizer():
    """The single-level joint step under fp16 with an arch optimizer that is not fused (what
    grafs.searching.step.arch_optimizer builds on devices other than CPU/CUDA) and a cell with
    one op per hole (eager mode: α and γ get no gradient at all) must not fail."""
    from grafs.searching.step import Stepper
    net = model()
    cell = SearchSpace("B(U(x), U(x))", unary=["relu"], binary=["add"]).relax("eager", seed=0)
    state = {"use_cell": True}
    n = replace_activations(net, lambda o: SearchSite(o, cell, state))
    arch = list(cell.arch_parameters())
    ws = [p for p in net.parameters() if id(p) not in {id(q) for q in arch}]
    st = Stepper(net, cell, state, ws, arch, torch.optim.SGD(ws, 0.1),
                  torch.optim.Adam(arch, 1e-3, fused=False), None, nn.functional.cross_entropy,
                  torch.device("cpu"), amp="fp16", n_sites=n, single_level=True)
    x, y = data(64)
    st.step(x, y, None, None, warm=False)
    assert all(p.grad is None for p in ws + arch)


def test_single_level_averages_the_arch_gradients_over_the_ranks():
    """Data-parallel single-level step: the weights' and α/γ's gradients are both averaged
    over the ranks (grafs.searching.distributed.Dist.average_grads) before the optimizers step, once
    per update (not on a grad-accumulation micro-step)."""
    class Ranks:            # the two calls a step makes of grafs.searching.distributed.Dist
        def __init__(self):
            self.calls = []

        def average_grads(self, params):
            params = list(params)
            self.calls.append({id(p) for p in params if p.grad is not None})
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(0.5)    # as if the other rank's gradients were zeros

    ranks = Ranks()
    net = model()
    st, ws, arch = stepper(net, lambda ws: torch.optim.SGD(ws, 1.0),
                           lambda arch: torch.optim.SGD(arch, 1.0), single_level=True,
                           grad_accumulation=2, dist=ranks)
    x, y = data(64)
    st.step(x[:32], y[:32], None, None, warm=False, update=False)
    assert ranks.calls == []
    grads = []
    orig = st._apply

    def spy(scaler, opt, params, also=()):
        grads.extend(p.grad.clone() if p.grad is not None else None for p in ws + arch)
        orig(scaler, opt, params, also)
    st._apply = spy
    before = [p.detach().clone() for p in ws + arch]
    st.step(x[32:], y[32:], None, None, warm=False, update=True)
    averaged = set().union(*ranks.calls)
    assert {id(p) for p in ws} <= averaged
    assert {id(p) for p in arch if p is not arch[-1]} <= averaged       # every α
    for p, b, g in zip(ws + arch, before, grads):
        if g is not None:
            torch.testing.assert_close(p.detach(), b - g / 2)           # stepped on the average
