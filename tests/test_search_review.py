"""grafs.search as a user calls it, on inputs the other tests do not cover: a second search of
the same model, activations with their own settings, regression targets, gradient
accumulation in the from-scratch runs, keyword typos, a DataLoader without val_data, and
warnings attributed to the user's line."""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import grafs
from grafs.errors import GrafsError, GrafsWarning
from grafs.searching import loop
from grafs.searching.original import original_activation
from grafs.searching.scratch import ScratchTrainer
from grafs.searching.sites import DEFAULT_TYPES
from grafs.searching.losses import default_loss

from tests.test_own_model import SMALL, data


def model(act=nn.ReLU, seed=0, out=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), act(), nn.Linear(16, out))


def fast(**kw):
    return dict(space=grafs.SearchSpace(**SMALL, normalize=True), budget="as_given", epochs=3,
                batch_size=32, progress=False, **kw)


def test_search_leaves_the_model_as_it_was_and_a_second_search_is_a_fresh_one():
    m = model()
    before = copy.deepcopy(m.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrafsWarning)
        grafs.search(m, data(), seed=0, **fast(verdict_seeds=2))
        assert isinstance(m[1], nn.ReLU)                   # no search sites left in it
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
        again = grafs.search(m, data(), seed=1, **fast(verdict_seeds=2))
        fresh = grafs.search(model(), data(), seed=1, **fast(verdict_seeds=2))
    assert again.formula == fresh.formula
    assert again.history["verdict"]["found_losses"] == fresh.history["verdict"]["found_losses"]
    assert again.history["verdict"]["original_losses"] == fresh.history["verdict"]["original_losses"]


@pytest.mark.parametrize("act", [lambda: nn.LeakyReLU(0.2), lambda: nn.ELU(alpha=0.5),
                                 lambda: nn.LeakyReLU(0.2, inplace=True),
                                 lambda: nn.CELU(alpha=0.7), lambda: nn.GELU(approximate="tanh"),
                                 lambda: nn.Softplus(beta=3.0), nn.Hardswish, nn.ReLU6, nn.SiLU,
                                 lambda: grafs.Act("gelu"), lambda: grafs.Act("sin(x)")])
def test_the_original_activation_is_named_with_its_own_settings(act):
    module = act()
    formula = original_activation(model(lambda: module), DEFAULT_TYPES)
    xs = torch.linspace(-6, 6, 241)
    got = grafs.compile(formula, backend="eager")(xs)
    torch.testing.assert_close(got, module(xs.clone()), rtol=1e-5, atol=1e-6)


def test_an_activation_without_a_formula_is_refused_before_the_search(monkeypatch):
    def no_search(*a, **k):
        raise AssertionError("the search ran before the activation was named")
    monkeypatch.setattr(loop, "search", no_search)
    with pytest.raises(GrafsError, match="PReLU.*grafs.Act"):
        grafs.search(model(nn.PReLU), data(), **fast(verdict_seeds=2))


def test_act_takes_a_bare_function_name_as_the_docs_show():
    xs = torch.linspace(-3, 3, 61)
    assert grafs.Act("gelu").formula == "gelu(x)"
    torch.testing.assert_close(grafs.Act("gelu")(xs), F.gelu(xs))
    torch.testing.assert_close(grafs.Act("relu")(xs), F.relu(xs))


def test_default_loss_is_mse_for_float_targets():
    out = torch.tensor([[0.5], [2.0], [-1.0]])
    y = torch.tensor([1.0, 0.0, -1.0])
    want = ((0.5 - 1.0) ** 2 + (2.0 - 0.0) ** 2 + 0.0) / 3
    assert float(default_loss(out, y)) == pytest.approx(want)
    assert float(default_loss(out, y[:, None])) == pytest.approx(want)
    logits, cls = torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    assert float(default_loss(logits, cls)) == pytest.approx(float(F.cross_entropy(logits, cls)))


def test_a_regression_search_with_the_default_loss_learns():
    x, _ = data()
    y = torch.sin(x[:, :1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrafsWarning)
        r = grafs.search(model(out=1), (x, y), **fast(verdict_seeds=1))
    # cross-entropy over one output unit is 0 whatever the network does
    assert min(r.history["train_loss"]) > 0
    assert all(v > 0 for v in r.history["verdict"]["original_losses"])


class _Counting:
    """An optimizer factory that records each optimizer's steps."""

    def __init__(self):
        self.steps = []

    def __call__(self, params):
        opt = torch.optim.SGD(params, lr=0.01)
        self.steps.append(0)
        i, step = len(self.steps) - 1, opt.step

        def counted(*a, **k):
            self.steps[i] += 1
            return step(*a, **k)
        opt.step = counted
        return opt


def test_scratch_runs_accumulate_gradients_as_the_search():
    count = _Counting()
    x, y = data(96)
    t = ScratchTrainer(model(), (x, y), (x[:32], y[:32]), epochs=2, batch_size=8, loss_fn=None,
                       optimizer=count, scheduler=None, activation_types=DEFAULT_TYPES,
                       device=torch.device("cpu"), grad_accum_steps=4)
    t.val_loss("relu(x)", 0)
    assert count.steps == [2 * 3]          # 12 micro-batches an epoch, 4 per optimizer step
    count.steps.clear()
    t = ScratchTrainer(model(), (x, y), (x[:32], y[:32]), epochs=2, batch_size=8, loss_fn=None,
                       optimizer=count, scheduler=None, activation_types=DEFAULT_TYPES,
                       device=torch.device("cpu"), grad_accum_steps=2, max_steps_per_epoch=2)
    t.val_loss("relu(x)", 0)
    assert count.steps == [2 * 2]          # max_steps_per_epoch counts optimizer steps


def test_search_passes_its_accumulation_to_the_scratch_runs():
    count = _Counting()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrafsWarning)
        grafs.search(model(), data(96), optimizer=count, grad_accumulation=3, check=False,
                     **fast(verdict_seeds=1))
    # 72 training examples, batch 32: 3 micro-batches an epoch, one optimizer step of 3
    assert count.steps == [3, 3, 3]        # the search, the found formula, the original


def test_a_keyword_typo_is_a_grafs_error_naming_the_keyword():
    with pytest.raises(GrafsError, match=r"'arch_lrr' \(did you mean 'arch_lr'\?\).*accepted:"):
        grafs.search(model(), data(), arch_lrr=0.1, **fast())


def test_a_dataloader_without_val_data_says_to_pass_val_data():
    loader = DataLoader(TensorDataset(*data()), batch_size=32)
    with pytest.raises(GrafsError, match="DataLoader.*val_data"):
        grafs.search(model(), loader, **fast())


def test_restart_splits_with_val_data_warns_that_it_cannot_apply(recwarn):
    x, y = data()
    grafs.search(model(), (x[:64], y[:64]), (x[64:], y[64:]), restarts=2, restart_splits=True,
                 check=False, **fast(verdict_seeds=0))
    msgs = [str(w.message) for w in recwarn if issubclass(w.category, GrafsWarning)]
    assert any("restart_splits" in m and "val_data" in m for m in msgs)


def test_search_warnings_point_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the paper's space, 3 steps an epoch: α is still uniform at the first drop
        grafs.search(model(), data(), seed=0, budget="as_given", epochs=3, batch_size=32,
                     progress=False, verdict_seeds=1)
    ours = [w for w in caught if issubclass(w.category, GrafsWarning)]
    assert ours
    assert {w.filename for w in ours} == {__file__}


def test_a_model_searched_in_place_is_refused_rather_than_nested():
    m = model()
    grafs.Searcher(m, epochs=3)             # the Searcher changes the model in place
    with pytest.raises(GrafsError, match="already holds a search's sites"):
        grafs.Searcher(m, epochs=3)
    with pytest.raises(GrafsError, match="already holds a search's sites"):
        grafs.search(m, data(), **fast())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_searcher_on_cuda_without_cuda_is_a_grafs_error():
    with pytest.raises(GrafsError, match="CUDA is not available"):
        grafs.Searcher(model(), epochs=3, device="cuda")
    with pytest.raises(GrafsError, match="CUDA is not available"):
        grafs.search(model(), data(), device="cuda", **fast())


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 2))

    def forward(self, x):
        h = x.view(len(x), 2, 8)
        return self.mlp(self.attn(h, h, h)[0].mean(1))


def test_scratch_runs_reinitialise_attention_weights_per_seed():
    template = _Attention()
    x, y = torch.randn(32, 16), torch.randint(0, 2, (32,))
    t = ScratchTrainer(template, (x, y), (x, y), epochs=1, batch_size=8, loss_fn=None,
                       optimizer=None, scheduler=None, activation_types=DEFAULT_TYPES,
                       device=torch.device("cpu"))
    a, b = t.fresh_model(None, 0), t.fresh_model(None, 1)
    for name in ("attn.in_proj_weight", "mlp.0.weight"):
        wa, wb = a.get_parameter(name), b.get_parameter(name)
        assert not torch.equal(wa, wb), name            # each seed its own initialisation
        assert not torch.equal(wa, template.get_parameter(name)), name
    torch.testing.assert_close(t.fresh_model(None, 0).attn.in_proj_weight, a.attn.in_proj_weight)


def test_the_cli_lists_no_variants_of_a_rejected_formula_under_the_original(capsys):
    from grafs.cli.search_commands import _print_found
    from grafs.searching.result import SearchResult
    h = {"unscaled_formula": "x*tanh(x)", "uncentred_formula": "1.53*x*tanh(x) + 0.2",
         "rejected_formula": "1.53*x*tanh(x)"}
    _print_found(SearchResult("relu(x)", h, {}))
    out = capsys.readouterr().out
    assert "use this activation: relu(x)" in out
    assert "variants" not in out and "x*tanh(x)  —" not in out
    assert "the search found 1.53*x*tanh(x), but the verdict found it worse" in out
    _print_found(SearchResult("x*tanh(x)", {"uncentred_formula": "x*tanh(x) + 0.2"}, {}))
    assert "variants:" in capsys.readouterr().out          # a found formula keeps its variants


class _Scaled(nn.Module):
    """A custom layer with a parameter of its own and no reset_parameters."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 16)
        self.gain = nn.Parameter(torch.randn(16))
        self.act = nn.ReLU()
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        return self.out(self.act(self.lin(x) * self.gain))


def test_scratch_runs_warn_about_parameters_they_cannot_reinitialise():
    x, y = data()
    kw = dict(epochs=1, batch_size=8, loss_fn=None, optimizer=None, scheduler=None,
              activation_types=DEFAULT_TYPES, device=torch.device("cpu"))
    with pytest.warns(GrafsWarning, match=r"_Scaled\.gain: parameters of modules without reset_parameters"):
        t = ScratchTrainer(_Scaled(), (x, y), (x, y), **kw)
    # what it says: every seed starts the gain from the model's values
    assert torch.equal(t.fresh_model(None, 0).gain, t.fresh_model(None, 1).gain)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GrafsWarning)
        ScratchTrainer(model(), (x, y), (x, y), **kw)          # every module resets: no warning
        ScratchTrainer(_Attention(), (x, y), (x, y), **kw)
        ScratchTrainer(lambda s: _Scaled(), (x, y), (x, y), **kw)   # a factory builds fresh ones
