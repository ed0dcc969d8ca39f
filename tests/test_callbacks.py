"""Callbacks (grafs.callbacks) and the TensorBoard logger: what a search and an evaluation report,
checked against the search history and a scipy entropy reference; event files read back with
TensorBoard's own reader. Budget: about 10 s on one CPU thread (one tiny search, one tiny
evaluation)."""
import math

import pytest
import torch
from torch import nn

import grafs
from grafs.searching.loop import search as search_once
from grafs.callbacks import Callback
from grafs.runtime.entropy import normalized_entropy
from grafs.errors import GrafsError
from grafs.protocol.evaluate import evaluate
from grafs.runtime.space import SearchSpace
from grafs.tasks import SearchConfig, Task, TrainConfig

SPACE = dict(template="B(U(B(U(x), U(x))), U(x))",
             unary=["identity", "relu", "gelu", "silu", "tanh", "square", "mul_gamma"],
             binary=["add", "mul", "mix", "max"])
EPOCHS, STEPS = 3, 3      # 96 samples, 72 for training: 3 batches of 32 per epoch


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, ((x[:, 0] * x[:, 1] + 0.5 * x[:, 2]) > 0).long()


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_search_start(self, info): self.calls.append(("start", info))
    def on_step_end(self, info): self.calls.append(("step", info))
    def on_epoch_end(self, info): self.calls.append(("epoch", info))
    def on_search_end(self, result): self.calls.append(("end", result))
    def on_eval_start(self, info): self.calls.append(("eval_start", info))
    def on_eval_run_end(self, info): self.calls.append(("run", info))
    def on_eval_end(self, table): self.calls.append(("eval_end", table))

    def of(self, kind):
        return [x for k, x in self.calls if k == kind]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One tiny search with a recorder and (where tensorboard imports) the TensorBoard logger."""
    torch.set_num_threads(1)
    rec = Recorder()
    cbs = [rec]
    log_dir = tmp_path_factory.mktemp("tb")
    try:
        cbs.append(grafs.TensorBoardLogger(log_dir, step_every=2))
    except GrafsError:  # tensorboard not installed: the TensorBoard test skips
        log_dir = None
    result = search_once(model(), data(), space=SearchSpace(**SPACE), epochs=EPOCHS, seed=1,
                          batch_size=32, progress=False, arch_lr=3e-2, callbacks=cbs)
    return result, rec, log_dir


# -- the entropy diagnostic -----------------------------------------------------------------------
def test_normalized_entropy_matches_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is in the test extra")
    for alpha in ([0.3, -1.2, 2.0], [0.0, 0.0, 0.0, 0.0], [5.0, -5.0], [0.1] * 23):
        conc = [a + 1 if a > 0 else math.exp(a) for a in alpha]      # elu(a) + 1
        p = [c / sum(conc) for c in conc]
        assert normalized_entropy(alpha) == pytest.approx(stats.entropy(p) / math.log(len(alpha)))
    assert normalized_entropy([0.0, 0.0, 0.0]) == pytest.approx(1.0)   # uniform mean
    assert normalized_entropy([0.7]) == 0.0                             # one op left: decided


def test_history_entropy_is_that_of_the_active_alphas(searched):
    result, _, _ = searched
    h = result.history
    space = SearchSpace(**SPACE)
    assert len(h["entropy"]) == EPOCHS
    for e in range(EPOCHS):
        gone = {(hole, op) for de, hole, op in h["dropped"] if de <= e}
        for hi, hole in enumerate(space.holes):
            act = [a for op, a in zip(hole.ops, h["alpha"][e][hi]) if (hole.name, op) not in gone]
            assert h["entropy"][e][hi] == pytest.approx(normalized_entropy(act))
    assert h["entropy"][0] == pytest.approx([1.0] * 6, abs=0.02)   # α starts near 0: undecided
    assert h["entropy"][-1] == [0.0] * 6                            # discrete at the end


# -- the callback interface ----------------------------------------------------------------------
def test_search_callbacks_see_every_step_and_epoch(searched):
    result, rec, _ = searched
    kinds = [k for k, _ in rec.calls]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("start") == 1
    start = rec.of("start")[0]
    assert start.holes == ["U0", "U1", "B0", "U2", "U3", "B1"]
    assert (start.epochs, start.first_epoch, start.steps_per_epoch, start.activation_sites) == \
        (EPOCHS, 0, STEPS, 2)
    steps = rec.of("step")
    assert [s.global_step for s in steps] == list(range(EPOCHS * STEPS))
    assert [s.warm for s in steps] == [True] * STEPS + [False] * (EPOCHS - 1) * STEPS
    assert all(torch.isfinite(s.loss) and torch.isfinite(s.val_loss) for s in steps)
    epochs = rec.of("epoch")
    h = result.history
    assert [i.epoch for i in epochs] == h["epochs"] == [0, 1, 2]
    for i, info in enumerate(epochs):
        assert (info.train_loss, info.val_loss, info.val_acc) == \
            (h["train_loss"][i], h["val_loss"][i], h["val_acc"][i])
        assert (info.formula, info.num_active, info.entropy) == \
            (h["formula"][i], h["num_active"][i], h["entropy"][i])
        assert sum(len(ops) for ops in info.active_ops) == info.num_active
        assert [len(a) for a in info.alpha] == [len(ops) for ops in info.active_ops]
        assert info.dropped == [(hole, op) for e, hole, op in h["dropped"] if e == i]
    assert rec.of("end") == [result]


def test_bad_callbacks_are_clear_errors():
    with pytest.raises(GrafsError, match="grafs.Callback"):
        search_once(model(), data(), callbacks=[print], progress=False)
    with pytest.raises(GrafsError, match="list of grafs.Callback"):
        search_once(model(), data(), callbacks=3, progress=False)


# -- TensorBoard ---------------------------------------------------------------------------------
def _events(log_dir):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                             reason="needs the tensorboard extra: pip install 'grafs[tensorboard]'")
    acc = ea.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0,
                                                           "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_tensorboard_events_hold_every_epoch(searched):
    pytest.importorskip("matplotlib", reason="activation images need the plots extra")
    result, rec, log_dir = searched
    if log_dir is None:
        pytest.skip("needs the tensorboard extra: pip install 'grafs[tensorboard]'")
    acc = _events(log_dir)
    h = result.history
    per_epoch = {"loss/train": h["train_loss"], "loss/val": h["val_loss"],
                 "accuracy/train": h["train_acc"], "accuracy/val": h["val_acc"],
                 "search/ops_active": h["num_active"]}
    for hi, hole in enumerate(rec.of("start")[0].holes):
        per_epoch[f"entropy/{hole}"] = [e[hi] for e in h["entropy"]]
    for tag, want in per_epoch.items():
        got = acc.Scalars(tag)
        assert [s.step for s in got] == h["epochs"], tag
        assert [s.value for s in got] == pytest.approx(want, rel=1e-6), tag
    losses = {s.global_step: float(s.loss) for s in rec.of("step")}
    got = acc.Scalars("step/train_loss")
    assert [s.step for s in got] == list(range(0, EPOCHS * STEPS, 2))
    assert [s.value for s in got] == pytest.approx([losses[s.step] for s in got], rel=1e-6)
    # α histograms: one per hole and epoch, over the ops still active
    for hi, hole in enumerate(rec.of("start")[0].holes):
        hist = acc.Histograms(f"alpha/{hole}")
        assert [x.step for x in hist] == h["epochs"]
        infos = rec.of("epoch")
        assert [x.histogram_value.num for x in hist] == [len(i.alpha[hi]) for i in infos]
        assert [x.histogram_value.max for x in hist] == pytest.approx([max(i.alpha[hi]) for i in infos])
    # the leading formula as text, every epoch, and the result at the end
    texts = acc.Tensors("search/formula/text_summary")
    assert [t.step for t in texts] == h["epochs"]
    for t, formula in zip(texts, h["formula"]):
        assert t.tensor_proto.string_val[0].decode().startswith(f"`{formula}`")
    assert acc.Tensors("search/result/text_summary")[0].tensor_proto.string_val[0].decode() \
        .startswith(f"`{result.formula}`")
    # the leading activation's plot, every epoch: a PNG
    images = acc.Images("search/activation")
    assert [i.step for i in images] == h["epochs"]
    assert all(i.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and i.width > 100 for i in images)


def tiny_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return Task("tiny", "a linear rule in 8-d", x[:96], y[:96], x[96:], y[96:],
                model_builder=lambda act: nn.Sequential(nn.Linear(8, 8), act(), nn.Linear(8, 2)),
                default_activation=nn.ReLU, activation_types=(nn.ReLU,),
                search_config=SearchConfig(epochs=3), eval_config=TrainConfig(epochs=2, batch_size=32))


def test_evaluate_callbacks_and_tensorboard(tmp_path):
    rec = Recorder()
    cbs = [rec]
    try:
        cbs.append(grafs.TensorBoardLogger(tmp_path))
    except GrafsError:
        pass
    table = evaluate(tiny_task(), {"found": "0.5*relu(x) + 0.5*gelu(x)"}, baselines=["ReLU"],
                     seeds=[0, 1], progress=False, callbacks=cbs)
    start = rec.of("eval_start")[0]
    assert (start.task, start.metric, start.seeds, start.epochs) == ("tiny", "accuracy", [0, 1], 2)
    assert start.activations == {"found": "0.5*relu(x) + 0.5*gelu(x)", "ReLU": "ReLU"}
    runs = rec.of("run")
    assert [(r.name, r.seed, r.run, r.runs) for r in runs] == \
        [("found", 0, 0, 4), ("found", 1, 1, 4), ("ReLU", 0, 2, 4), ("ReLU", 1, 3, 4)]
    assert [r.score for r in runs] == [s for row in table.rows for s in row.scores]
    assert all(len(r.train_loss) == 2 for r in runs)
    assert rec.of("eval_end") == [table]
    if len(cbs) == 1:
        pytest.skip("needs the tensorboard extra: pip install 'grafs[tensorboard]'")
    acc = _events(tmp_path)
    for row in table.rows:
        got = acc.Scalars(f"eval/accuracy/{row.name}")
        assert [s.step for s in got] == [0, 1]
        assert [s.value for s in got] == pytest.approx(row.scores, rel=1e-6)
    got = acc.Scalars("eval_train_loss/ReLU/seed1")
    assert [s.value for s in got] == pytest.approx(runs[3].train_loss, rel=1e-6)
    assert "| ReLU |" in acc.Tensors("eval/table/text_summary")[0].tensor_proto.string_val[0].decode()


def test_cli_tensorboard_flags_build_the_logger(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra: pip install 'grafs[tensorboard]'")
    from grafs.cli import build_parser
    from grafs.cli.search_commands import _callbacks
    for cmd in ("search", "evaluate"):
        args = build_parser().parse_args([cmd, "--tensorboard", str(tmp_path / cmd)])
        (logger,) = _callbacks(args)
        assert isinstance(logger, grafs.TensorBoardLogger) and logger.log_dir == str(tmp_path / cmd)
        assert _callbacks(build_parser().parse_args([cmd])) == []
    with pytest.raises(GrafsError, match="step_every"):
        grafs.TensorBoardLogger(tmp_path, step_every=-1)


def test_alpha_plot_with_entropy_writes_a_png(searched, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the plots extra")
    from grafs.plot import plot_alpha_history
    result, _, _ = searched
    with pytest.raises(GrafsError, match="pass the search.s space"):
        plot_alpha_history(result, str(tmp_path / "alpha.png"))   # the default space has 110 ops
    path = plot_alpha_history(result, str(tmp_path / "alpha.png"), space=SearchSpace(**SPACE))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
