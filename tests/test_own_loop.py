"""grafs.Searcher: the search inside a user's own training loop (examples/own_loop.py).

The loop search (grafs.searching.loop.search) drives the same Searcher calls, so where the
recipes coincide (data order, seeds, optimizer, loss) a hand-written loop finds the same
formula with the same α history, bit for bit.
"""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grafs
from grafs.errors import GrafsError
from grafs.runtime.space import SearchSpace
from grafs.searching.loop import search as loop_search
from grafs.searching.sites import SearchSite
from tests.test_examples import load

pytestmark = pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning")  # tiny searches

SPACE = dict(template="B(U(x), U(x))", unary=["relu", "gelu", "tanh", "mul_gamma"],
             binary=["add", "max", "mix"])


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] + x[:, 1].sin() > 0).long() + (x[:, 2] > 1).long()


def searcher(net, **kw):
    return grafs.Searcher(net, **{"epochs": 3, "space": SearchSpace(**SPACE), "cell_mode": "lean",
                                  **kw})


def test_searcher_is_public_and_swaps_the_activations():
    net = model()
    s = searcher(net)
    assert grafs.Searcher is grafs.searching.Searcher is type(s)
    sites = [m for m in net.modules() if isinstance(m, SearchSite)]
    assert len(sites) == 2 and all(m.cell is s.cell for m in sites)
    ids = {id(p) for p in s.arch_parameters()}
    assert {id(p) for p in s.weight_parameters()} | ids == {id(p) for p in net.parameters()}
    assert not ids & {id(p) for p in s.weight_parameters()}
    assert s.settings["arch_lr"] == 3e-2 and s.settings["activation_sites"] == 2
    assert grafs.Searcher(model(), epochs=3).space.normalize       # the studied default space


def test_the_searchers_defaults_are_grafs_searchs_studied_ones():
    from grafs.searching import config
    from grafs.searching.searcher import STUDIED_ARCH_LR, STUDIED_ARCH_WEIGHT_DECAY
    assert (STUDIED_ARCH_LR, STUDIED_ARCH_WEIGHT_DECAY) == (config.AUTO_ARCH_LR,
                                                          config.AUTO_ARCH_WEIGHT_DECAY)
    s = grafs.Searcher(model(), epochs=3)
    assert s.arch_opt.defaults["weight_decay"] == 0.0 and s.arch_opt.defaults["lr"] == 3e-2


def test_arch_step_trains_alpha_only_and_keeps_accumulated_weight_gradients():
    net = model()
    s = searcher(net)
    x, y = data()
    (nn.functional.cross_entropy(net(x[:32]), y[:32])).backward()       # a user's accumulated grads
    grads = [p.grad.clone() for p in s.weight_parameters()]
    for p in s.arch_parameters():
        p.grad = None
    before = [p.detach().clone() for p in s.arch_parameters()]
    loss = s.arch_step(lambda: nn.functional.cross_entropy(net(x[32:]), y[32:]))
    assert loss.ndim == 0 and not loss.requires_grad
    assert any(not torch.equal(p, b) for p, b in zip(s.arch_parameters(), before))
    assert all(p.grad is None for p in s.arch_parameters())            # zeroed after the step
    for p, g in zip(s.weight_parameters(), grads):
        torch.testing.assert_close(p.grad, g)                            # untouched
        assert p.requires_grad


def test_weight_step_freezes_alpha_so_an_optimizer_over_all_parameters_skips_it():
    net = model()
    s = searcher(net, warmstart_epochs=0)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.5)  # α/γ included
    x, y = data()
    s.epoch_start(0)
    before = [p.detach().clone() for p in s.arch_parameters()]
    with s.weight_step():
        assert not any(p.requires_grad for p in s.arch_parameters())
        nn.functional.cross_entropy(net(x), y).backward()
    assert all(p.requires_grad for p in s.arch_parameters())
    assert all(p.grad is None for p in s.arch_parameters())
    opt.step()
    for p, b in zip(s.arch_parameters(), before):
        assert torch.equal(p, b)                                         # not even weight decay
    with s.weight_step(), pytest.raises(GrafsError, match="inside a weight step"):
        s.arch_step(lambda: net(x).sum())


def test_weight_steps_of_a_warm_start_epoch_use_the_original_activation():
    net = model()
    ref = copy.deepcopy(net)
    s = searcher(net, warmstart_epochs=1)
    x, _ = data()
    s.epoch_start(0)
    assert s.warm
    with s.weight_step():
        torch.testing.assert_close(net(x), ref(x))
    assert s.state["use_cell"]                     # evaluation sees the cell
    s.epoch_end()
    s.epoch_start()
    assert s.epoch == 1 and not s.warm


def test_epochs_and_arguments_are_checked():
    with pytest.raises(GrafsError, match="warmstart_epochs"):
        searcher(model(), epochs=2, warmstart_epochs=2)
    s = searcher(model())
    with pytest.raises(GrafsError, match="before any epoch_start"):
        s.epoch_end()
    with pytest.raises(GrafsError, match="outside the search's 3 epochs"):
        s.epoch_start(3)
    with pytest.raises(GrafsError, match="one-element tensor"):
        s.arch_step(lambda: torch.ones(3, requires_grad=True))


def test_the_schedule_drops_ops_at_epoch_starts_to_a_discrete_cell():
    net = model()
    s = searcher(net)
    x, y = data()
    dropped = []
    for epoch in range(3):
        dropped += s.epoch_start(epoch)
        s.arch_step(lambda: nn.functional.cross_entropy(net(x), y))
        s.epoch_end(val_loss=torch.tensor(0.5))
    assert s.cell.is_discrete() and len(dropped) == len(s.history["dropped"]) > 0
    r = s.result()
    assert r.history["val_loss"] == [0.5] * 3 and r.settings["epochs"] == 3
    grafs.parse(r.formula)


def own_loop(net, epochs, seed, stop_after=None, state=None):
    """A hand-written loop over tensors; ``stop_after``: return the checkpoint after that
    epoch; ``state``: resume from such a checkpoint."""
    x, y = data()
    torch.manual_seed(seed)
    s = searcher(net, epochs=epochs, seed=seed)
    opt = torch.optim.SGD(s.weight_parameters(), lr=0.1, momentum=0.9)
    first = 0
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        s.load_state_dict(state["searcher"])
        torch.set_rng_state(state["rng"])
        first = s.next_epoch
    for epoch in range(first, epochs):
        s.epoch_start(epoch)
        perm = torch.randperm(64)
        for i in range(0, 64, 16):
            idx, v = perm[i:i + 16], torch.randint(64, 96, (16,))
            s.arch_step(lambda: nn.functional.cross_entropy(net(x[v]), y[v]))
            with s.weight_step():
                nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            opt.zero_grad()
        s.epoch_end()
        if epoch == stop_after:
            return {"model": copy.deepcopy(net.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
                    "searcher": copy.deepcopy(s.state_dict()), "rng": torch.get_rng_state()}
    return s.result()


def test_state_dict_resumes_to_the_uninterrupted_search():
    full = own_loop(model(), 4, seed=2)
    ck = own_loop(model(), 4, seed=2, stop_after=1)
    assert ck["searcher"]["next_epoch"] == 2 and "cell" in ck["searcher"]
    resumed = own_loop(model(7), 4, seed=2, state=ck)    # another model: all comes from ck
    assert resumed.formula == full.formula
    assert resumed.history["alpha"] == full.history["alpha"]
    assert resumed.history["dropped"] == full.history["dropped"]


def test_a_state_of_another_space_or_schedule_is_refused_by_name():
    state = searcher(model()).state_dict()
    with pytest.raises(GrafsError, match=r"saved by another search \(epochs 3 there, 5 here"):
        searcher(model(), epochs=5).load_state_dict(state)
    other = SearchSpace(**{**SPACE, "unary": ["relu", "tanh"]})
    with pytest.raises(GrafsError, match=r"saved by another search \(ops .* there"):
        searcher(model(), space=other).load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "search"}     # saved before it was recorded
    with pytest.raises(GrafsError, match="does not fit the cell"):
        searcher(model(), space=other).load_state_dict(old)
    searcher(model()).load_state_dict(state)                      # the same search loads


@pytest.mark.parametrize("warm", [0, 1])
def test_own_loop_example_finds_the_loop_searchs_formula(warm, capsys):
    """examples/own_loop.py's hand-written loop and grafs.searching.loop.search over the same
    DataLoaders (same data order), seed, optimizer (Adam 1e-3) and loss: the same formula and
    α, γ and validation losses at every epoch."""
    ex = load("own_loop")
    x, y = ex.make_data(256)
    opts = dict(arch_lr=3e-2, arch_weight_decay=0.0, warmstart_epochs=warm, cell_mode="lean")

    def fresh():
        torch.manual_seed(0)
        return ex.make_model()
    own = ex.search_in_own_loop(fresh(), *ex.loaders(x, y, 64, seed=0), epochs=3, seed=0,
                                space=SearchSpace(**SPACE), **opts)
    assert "epoch 3/3" in capsys.readouterr().out
    ref = loop_search(fresh(), *ex.loaders(x, y, 64, seed=0), epochs=3, seed=0,
                      space=SearchSpace(**SPACE), optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3),
                      loss_fn=nn.functional.cross_entropy, progress=False, **opts)
    assert own.formula == ref.formula
    for k in ("alpha", "gamma", "dropped", "num_active", "formula", "val_loss"):
        assert own.history[k] == ref.history[k], k


def test_own_loop_example_runs():
    r = load("own_loop").main(["--tiny"])
    grafs.parse(r.formula)
    assert r.history["num_active"][-1] == 3


def test_searcher_in_a_loop_over_dataloaders_under_bf16_autocast():
    net = model()
    s = searcher(net, amp="bf16")
    loader = DataLoader(TensorDataset(*data()), batch_size=32)
    for epoch in range(3):
        s.epoch_start(epoch)
        for xb, yb in loader:
            s.arch_step(lambda: nn.functional.cross_entropy(net(xb), yb))
            with s.weight_step(), s.autocast():
                loss = nn.functional.cross_entropy(net(xb), yb)
            assert loss.dtype == torch.float32
        s.epoch_end()
    assert all(torch.isfinite(p).all() for p in s.arch_parameters())


def test_epoch_start_is_idempotent_and_catches_up_skipped_epochs():
    """epoch_start(e) twice (a mid-epoch state reloaded, then the epoch started again) dropped
    the epoch's ops twice, and skipped epochs' drops never happened (a Trainer with fewer
    steps than phases ended far from discrete); now each call drops down to the count the
    schedule reaches by that epoch."""
    s = searcher(model(), epochs=6)
    counts = {}
    for e in range(6):
        s.epoch_start(e)
        counts[e] = s.cell.num_active()
    again = searcher(model(), epochs=6)
    for e in range(6):
        again.epoch_start(e)
        again.epoch_start(e)
        assert again.cell.num_active() == counts[e], e
    skipping = searcher(model(), epochs=6)
    for e in (0, 2, 5):
        skipping.epoch_start(e)
        assert skipping.cell.num_active() == counts[e], e
    assert skipping.cell.is_discrete()
    with pytest.warns(grafs.errors.GrafsWarning, match=r"epoch_start\(1\) after epoch_start\(5\)"):
        skipping.epoch_start(1)
    assert skipping.cell.is_discrete()


def test_an_arch_step_without_a_graph_and_nested_weight_steps_are_errors():
    """A loss computed under no_grad made arch_step return with α unchanged, silently; a weight
    step nested in another unfroze α inside the outer one."""
    net = model()
    s = searcher(net)
    s.epoch_start(0)
    x, y = data()
    with pytest.raises(GrafsError, match="no autograd graph"):
        with torch.no_grad():
            s.arch_step(lambda: nn.functional.cross_entropy(net(x), y))
    before = [a.detach().clone() for a in s.cell.alpha]
    s.arch_step(lambda: nn.functional.cross_entropy(net(x), y))       # with a graph: α moves
    assert any(not torch.equal(a, b) for a, b in zip(s.cell.alpha, before))
    with s.weight_step():
        with pytest.raises(GrafsError, match="weight_step\\(\\) inside another weight step"):
            with s.weight_step():
                pass
        assert not any(p.requires_grad for p in s.arch_parameters())
