"""The teacher–student task: data, validation, shape_error against numpy references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from grafs.errors import GrafsError, ParseError
from grafs.tasks import get_task
from grafs.tasks.teacher import mse, shape_error

SMALL = dict(num_train=64, num_test=32, width=8)


def test_data_shapes_standardised_and_deterministic():
    t1 = get_task("teacher", teacher="tanh(x)", **SMALL)
    t2 = get_task("teacher", teacher="tanh(x)", seed=3, **SMALL)
    assert t1.train_x.shape == (64, 8) and t1.train_y.shape == (64, 1)
    assert t1.test_x.shape == (32, 8) and t1.test_y.shape == (32, 1)
    assert torch.equal(t1.train_y, t2.train_y)          # data fixed across task seeds
    assert abs(float(t1.train_y.mean())) < 1e-5
    assert abs(float(t1.train_y.std()) - 1) < 1e-5
    t3 = get_task("teacher", teacher="silu(x)", **SMALL)
    assert torch.equal(t1.train_x, t3.train_x)          # same inputs, other labels
    assert not torch.allclose(t1.train_y, t3.train_y)
    assert t1.metric_name == "mse" and not t1.higher_is_better


def test_labels_match_a_hand_written_teacher():
    """Rebuild the teacher from its recipe with numpy and compare the labels."""
    t = get_task("teacher", teacher="tanh(x)", **SMALL)
    g = torch.Generator().manual_seed(0)
    n = 64 + 32
    x = torch.randn(n, 8, generator=g, dtype=torch.float64).numpy()
    h = x
    for fan_in in (8, 8):
        w = torch.randn(fan_in, 8, generator=g, dtype=torch.float64).numpy() / np.sqrt(fan_in)
        pre = h @ w
        pre = (pre - pre.mean(0)) / pre.std(0, ddof=1) * 1.5
        h = np.tanh(pre.astype(np.float32)).astype(np.float64)
    y = (h @ (torch.randn(8, 1, generator=g, dtype=torch.float64).numpy() / np.sqrt(8)))[:, 0]
    y = (y - y[:64].mean()) / y[:64].std(ddof=1)
    np.testing.assert_allclose(t.train_y.numpy()[:, 0], y[:64], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t.test_y.numpy()[:, 0], y[64:], rtol=1e-4, atol=1e-5)


def test_bad_teachers_and_options_raise_grafs_errors():
    with pytest.raises(ParseError):
        get_task("teacher", teacher="tanh(x", **SMALL)
    with pytest.raises(GrafsError, match="does not depend on x"):
        get_task("teacher", teacher="sigmoid(2)", **SMALL)
    with pytest.raises(GrafsError, match="non-finite"):
        get_task("teacher", teacher="exp(exp(exp(10*x)))", **SMALL)
    with pytest.raises(GrafsError, match="preact_std"):
        get_task("teacher", teacher="tanh(x)", preact_std=-1, **SMALL)
    with pytest.raises(GrafsError, match="unknown option"):
        get_task("teacher", teacher="tanh(x)", teachr="relu(x)")
    with pytest.raises(GrafsError, match="student_norm must be true or false"):
        get_task("teacher", teacher="tanh(x)", student_norm="yes", **SMALL)
    with pytest.raises(GrafsError, match="student_init must be one of torch, teacher"):
        get_task("teacher", teacher="tanh(x)", student_init="he", **SMALL)


def test_student_norm_pins_the_preactivations_like_the_teachers():
    """With student_norm each hidden unit's pre-activation has mean 0 and std preact_std on the
    batch (no learnt affine), whatever the previous layer's scale: an input scale c in f(c·x)
    can no longer be absorbed, so the output affine map is the student's only symmetry."""
    task = get_task("teacher", teacher="tanh(x)", student_norm=True, preact_std=1.5, **SMALL)
    torch.manual_seed(0)
    net = task.model_builder(torch.nn.Identity)
    with torch.no_grad():
        net[0].weight.mul_(7.0)                       # a scale the norm must undo
        net[0].bias.add_(3.0)
        net.train()
        pre = net[1](net[0](task.train_x))
    ref = net[0](task.train_x)
    ref = (ref - ref.mean(0)) / torch.sqrt(ref.var(0, unbiased=False) + 1e-5) * 1.5
    torch.testing.assert_close(pre, ref.detach(), rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in net[1].parameters())    # no learnt affine
    plain = get_task("teacher", teacher="tanh(x)", **SMALL).model_builder(torch.nn.ReLU)
    assert len(plain) == 5 and len(task.model_builder(torch.nn.ReLU)) == 7
    assert "normalised" in task.description
    # a one-sample training batch (an odd-sized epoch's last) uses the running statistics
    norm = net[1]
    before = norm.running_mean.clone()
    one = torch.randn(1, norm.num_features)
    want = (one - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * 1.5
    torch.testing.assert_close(norm(one), want)
    torch.testing.assert_close(norm.running_mean, before)


def test_student_init_teacher_draws_the_teachers_weight_distribution():
    """student_init="teacher": hidden weights N(0, preact_std²/fan_in), output N(0, 1/fan_in),
    biases 0 — the teacher's distribution — so the student's pre-activations start on the
    teacher's range (std about preact_std on Gaussian inputs) instead of torch's ~0.6."""
    big = dict(num_train=64, num_test=32, width=512, in_dim=256)
    task = get_task("teacher", teacher="tanh(x)", student_init="teacher", preact_std=1.5, **big)
    torch.manual_seed(0)
    net = task.model_builder(torch.nn.Identity)
    for layer, std in ((net[0], 1.5), (net[2], 1.5), (net[4], 1.0)):
        w = layer.weight.detach().double()
        want = std / layer.in_features ** 0.5
        assert abs(float(w.std()) / want - 1) < 0.05          # 512·256 draws: about 0.3 %
        assert abs(float(w.mean())) < 0.05 * want
        assert not layer.bias.detach().any()
    pre = net[0](task.train_x)
    assert 1.2 < float(pre.std()) < 1.8
    assert "teacher scale" in task.description
    torch.manual_seed(0)
    plain = get_task("teacher", teacher="tanh(x)", **big).model_builder(torch.nn.Identity)
    assert float(plain[0](task.train_x).std()) < 0.8               # torch's default: ~1/sqrt(3)
    assert plain[0].bias.detach().any()


def _ref_shape_error(f, t):
    xs = np.linspace(-3, 3, 601)
    fx, tx = f(xs), t(xs)
    a = np.stack([fx, np.ones_like(fx)], 1)
    coef, *_ = np.linalg.lstsq(a, tx, rcond=None)
    return np.linalg.norm(a @ coef - tx) / np.linalg.norm(tx - tx.mean())


def test_shape_error_against_numpy():
    relu = lambda v: np.maximum(v, 0)
    assert shape_error("relu(x)", "tanh(x)") == pytest.approx(_ref_shape_error(relu, np.tanh), rel=1e-6)
    assert shape_error("abs(x)", "x^2") == pytest.approx(_ref_shape_error(np.abs, np.square), rel=1e-6)
    # invariant to the affine maps the next layer absorbs; a constant explains nothing
    assert shape_error("3*tanh(x) - 2", "tanh(x)") < 1e-9
    assert shape_error("0.5", "tanh(x)") == pytest.approx(1.0)
    assert shape_error("sqrt(max(x, 0.001))", "tanh(x)") > 0.1
    # with the input scale fitted too: sigmoid(x) = (1 + tanh(x/2))/2 exactly
    assert shape_error("sigmoid(x)", "tanh(x)") > 0.05
    assert shape_error("sigmoid(x)", "tanh(x)", input_scale=True) < 1e-9
    assert shape_error("relu(x)", "tanh(x)", input_scale=True) <= shape_error("relu(x)", "tanh(x)")


def test_mse_matches_torch():
    out, y = torch.randn(10, 1), torch.randn(10, 1)
    assert torch.allclose(mse(out, y), torch.nn.functional.mse_loss(out, y))


def test_cli_teacher_option(tmp_path, capsys):
    from grafs.cli import main
    rc = main(["evaluate", "--task", "teacher", "--teacher", "abs(x)", "--seeds", "1",
               "--epochs", "1", "--baselines", "ReLU", "--quiet"])
    assert rc == 0
    assert "mse" in capsys.readouterr().out
    assert main(["evaluate", "--task", "digits", "--teacher", "abs(x)", "--quiet"]) != 0


def test_small_search_recovers_the_teacher():
    """A small teacher–student search (the full study: docs/results-teacher.md): a one-hole
    cell whose candidates are the teacher's op and three other shapes."""
    from grafs.runtime.space import SearchSpace
    from grafs.protocol.task_search import search_task
    task = get_task("teacher", teacher="tanh(x)", num_train=1024, num_test=64, width=16,
                    epochs=8, warmstart_epochs=1, shrink_start_epoch=2, restarts=1)  # one search
    space = SearchSpace("U(x)", unary=["relu", "tanh", "square", "identity"], binary=["add"],
                        normalize=True)
    r = search_task(task, seed=0, space=space, progress=False)
    assert shape_error(r.formula, "tanh(x)") < 0.1, r.formula
