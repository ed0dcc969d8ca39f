"""The Lightning callback (grafs.integrations.lightning.GrafsSearch) around a user's module.

Where the recipes coincide (the same DataLoaders, seed, Adam 1e-3, cross-entropy, no sanity
check, the same gradient accumulation), Trainer.fit with the callback finds the formula and
the α/γ history of grafs.searching.loop.search bit for bit: both drive grafs.Searcher's calls.
"""
import json
import os

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning", reason="needs the lightning extra: pip install grafs[lightning]")

import grafs  # noqa: E402
from grafs.errors import GrafsError  # noqa: E402
from grafs.integrations.lightning import GrafsSearch  # noqa: E402
from grafs.runtime.space import SearchSpace  # noqa: E402
from grafs.searching.loop import search as loop_search  # noqa: E402
from grafs.searching.rng import seed_everything  # noqa: E402
from tests.test_examples import load  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning"),   # tiny searches
              pytest.mark.filterwarnings("ignore::UserWarning"),                  # Lightning's tips
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SPACE = dict(template="B(U(x), U(x))", unary=["relu", "gelu", "tanh", "mul_gamma"],
             binary=["add", "max", "mix"])
KEYS = ("alpha", "gamma", "dropped", "num_active", "formula")


def example():
    return load("own_loop")


#: the user's module of examples/lightning_search.py: its loss in training_step (logged),
#: Adam over all its parameters
Module = load("lightning_search").Classifier


def net():
    torch.manual_seed(0)
    return example().make_model()


class Passes(torch.utils.data.Sampler):
    """A seeded permutation per pass. (torch's RandomSampler draws one more permutation from
    its generator when a loop asks for a batch past the last one: the plain loops do, as a
    `for` loop does, Lightning, which knows the length, does not; so with it the epochs after
    the first would see other batches.)"""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.passes = n, seed, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        self.passes += 1
        g = torch.Generator().manual_seed(self.seed * 1000 + self.passes)
        return iter(torch.randperm(self.n, generator=g).tolist())


def loaders():
    """The example's 75/25 split; the training batches in a seeded order per epoch."""
    from torch.utils.data import DataLoader
    ex = example()
    train, val = ex.loaders(*ex.make_data(256), 64, seed=0)
    return DataLoader(train.dataset, batch_size=64, sampler=Passes(len(train.dataset), 0)), val


def trainer(callbacks, epochs=3, **kw):
    args = dict(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


def fit(epochs=3, search_kw=None, **trainer_kw):
    cb = GrafsSearch(space=SearchSpace(**SPACE), cell_mode="lean", **(search_kw or {}))
    module = Module(net())
    train, val = loaders()
    seed_everything(0)
    trainer(cb, epochs, **trainer_kw).fit(module, train, val)
    return cb, module


@pytest.mark.parametrize("accumulate", [1, 2])
def test_fit_with_the_callback_finds_the_loop_searchs_formula(accumulate):
    cb, _ = fit(accumulate_grad_batches=accumulate)
    ref = loop_search(net(), *loaders(), space=SearchSpace(**SPACE), epochs=3, seed=0,
                      arch_lr=3e-2, arch_weight_decay=0.0, cell_mode="lean",
                      grad_accumulation=accumulate,
                      optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3),
                      loss_fn=nn.functional.cross_entropy, progress=False)
    assert cb.result.formula == ref.formula
    for k in KEYS:
        assert cb.result.history[k] == ref.history[k], k
    h = cb.result.history
    assert all(isinstance(v, float) for v in h["val_loss"] + h["train_loss"])   # logged metrics
    assert cb.result.settings["accumulate_grad_batches"] == accumulate
    assert cb.result.settings["integration"] == "lightning"


def test_the_users_optimizer_over_all_parameters_never_moves_alpha_and_arch_data_options():
    """Epochs past the search train with the discrete cell and take no arch steps; α/γ only
    change in arch steps (the module's Adam holds them, with grad None)."""
    ex = example()
    x, y = ex.make_data(256)
    train, _ = ex.loaders(x, y, 64, seed=0)
    from torch.utils.data import DataLoader, TensorDataset
    held_out = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    for arch_data in ("train", held_out):
        cb = GrafsSearch(epochs=2, arch_data=arch_data, space=SearchSpace(**SPACE))
        module = Module(net())
        trainer(cb, epochs=3, limit_val_batches=0).fit(module, train)
        alpha = [a.detach().clone() for a in cb.searcher.cell.alpha]
        assert cb.searcher.cell.is_discrete() and cb.result.history["epochs"] == [0, 1]
        opt = module.optimizers().optimizer
        assert any(p is cb.searcher.cell.gamma for g in opt.param_groups for p in g["params"])
        assert all(torch.equal(a, b) for a, b in zip(cb.searcher.cell.alpha, alpha))
        grafs.parse(cb.result.formula)


def test_without_validation_data_the_error_says_what_to_pass():
    cb = GrafsSearch(space=SearchSpace(**SPACE))
    with pytest.raises(GrafsError, match="arch_data='train'"):
        trainer(cb, epochs=2, limit_val_batches=0).fit(Module(net()), loaders()[0])


def test_bf16_mixed_precision_on_the_cpu():
    cb, module = fit(precision="bf16-mixed")
    assert cb.result.settings["precision"] == "bf16-mixed"
    assert all(torch.isfinite(a).all() for a in cb.searcher.cell.alpha)
    assert cb.searcher.cell.is_discrete()
    grafs.parse(cb.result.formula)


def test_resume_from_a_lightning_checkpoint_gives_the_uninterrupted_formula(tmp_path):
    """4 epochs in one fit, or 2 and then a fit resumed from the checkpoint: the same formula
    and α history (the callback restores the search and the RNG state; the sanity check's
    validation batches, which draw samples too, run in both fits)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(epochs, ckpt=None, dirpath=None):
        cb = GrafsSearch(epochs=4, space=SearchSpace(**SPACE), cell_mode="lean")
        cbs = [cb] + ([ModelCheckpoint(dirpath=dirpath, save_last=True)] if dirpath else [])
        train, val = loaders()
        seed_everything(0)
        trainer(cbs, epochs, enable_checkpointing=bool(dirpath), num_sanity_val_steps=2).fit(
            Module(net()), train, val, ckpt_path=ckpt)
        return cb.result

    full = run(4)
    run(2, dirpath=tmp_path)
    resumed = run(4, ckpt=tmp_path / "last.ckpt")
    assert resumed.formula == full.formula
    for k in KEYS:
        assert resumed.history[k] == full.history[k], k


def test_grafs_lightning_is_the_integration_and_grafs_does_not_import_lightning():
    import subprocess
    import sys
    code = ("import grafs, sys; grafs.Searcher; print('lightning' in sys.modules); "
            "from grafs.lightning import GrafsSearch; "
            "from grafs.integrations.lightning import GrafsSearch as G; print(G is GrafsSearch)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    imported_by_grafs, same_class = out.stdout.split()
    assert imported_by_grafs == "False"     # import grafs (and grafs.Searcher) pulls no Lightning
    assert same_class == "True"             # grafs.lightning is the integration's callback


# -- DDP on 2 gloo processes ------------------------------------------------------------------
def _ddp_worker(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank),
                      NODE_RANK="0", WORLD_SIZE="2", RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(rank)         # different initial weights: DDP starts from rank 0's
    module = Module(example().make_model())
    cb = GrafsSearch(space=SearchSpace(**SPACE), cell_mode="lean", seed=rank)    # α too
    train, val = loaders()
    t = L.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp", callbacks=[cb],
                  logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, accumulate_grad_batches=2)
    t.fit(module, train, val)
    out = {"formula": cb.result.formula, "alpha": cb.result.history["alpha"],
           "dropped": cb.result.history["dropped"],
           "weights": [p.detach().flatten().tolist() for p in cb.searcher.weight_parameters()],
           "val_loss": cb.result.history["val_loss"]}
    with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


def test_ddp_ranks_end_with_the_same_alpha_and_formula(tmp_path):
    from grafs.testing.ranks import start_ranks
    start_ranks(_ddp_worker, 2, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["formula"] == r1["formula"]
    assert r0["alpha"] == r1["alpha"] and r0["dropped"] == r1["dropped"]
    assert r0["weights"] == r1["weights"]           # DDP's averaged weight steps
    assert len(r0["alpha"]) == 3 and r0["alpha"][0] != r0["alpha"][-1]
    grafs.parse(r0["formula"])


@pytest.mark.parametrize("precision, accumulate", [("32-true", 1), ("bf16-mixed", 2)])
def test_lightning_example_runs(precision, accumulate):
    r = load("lightning_search").main(["--tiny", "--precision", precision, "--accumulate",
                                       str(accumulate)])
    grafs.parse(r.formula)
    assert r.settings["precision"] == precision and r.history["num_active"][-1] == 3


def test_the_same_callback_in_a_second_fit_searches_the_new_module_or_refuses_the_old():
    cb = GrafsSearch(space=SearchSpace(**SPACE), cell_mode="lean")
    train, val = loaders()
    first = Module(net())
    trainer(cb, 2).fit(first, train, val)
    formula = cb.result.formula
    second = Module(net())
    trainer(cb, 2).fit(second, train, val)
    # the new module is searched (it kept its ReLUs, and the history ran on, before)
    from grafs.searching.sites import SearchSite
    assert cb.searcher.model is second and any(isinstance(m, SearchSite) for m in second.modules())
    assert cb.result.history["epochs"] == [0, 1]
    grafs.parse(cb.result.formula)
    with pytest.raises(GrafsError, match="already searched"):
        trainer(cb, 2).fit(second, train, val)
    assert formula


def test_a_fit_shorter_than_the_search_warns_that_the_formula_is_unfinished():
    from grafs.errors import GrafsWarning
    cb = GrafsSearch(epochs=4, space=SearchSpace(**SPACE), cell_mode="lean")
    train, val = loaders()
    with pytest.warns(GrafsWarning, match="after 2 of the search's 4 epochs"):
        trainer(cb, 2).fit(Module(net()), train, val)
    assert not cb.searcher.cell.is_discrete()
    assert any("unfinished search" in w for w in cb.result.history["warnings"])
