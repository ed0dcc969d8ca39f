"""The tasks built from scikit-image's bundled photographs: ``textures`` and ``inr``.

Data against hand-written references (patch cutting, block averaging, the 8 symmetries,
per-patch standardisation; pixel coordinates, the resized image, Fourier features), the
region / pixel splits (no window or pixel shared by train and test), determinism, the
split-level PSNR, the default search spaces, and a one-epoch training run of each model.
"""
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("skimage", reason="the textures and inr tasks need scikit-image "
                                      "(the 'tasks' extra)")

from grafs.errors import GrafsError  # noqa: E402
from grafs.models import activation_sites  # noqa: E402
from grafs.ops import EXTRA_UNARY, GRAFS_UNARY  # noqa: E402
from grafs.tasks import get_task  # noqa: E402
from grafs.tasks import _skimage  # noqa: E402
from grafs.tasks import inr as inr_mod  # noqa: E402
from grafs.tasks import textures as tex_mod  # noqa: E402

TINY_TEX = dict(classes=("brick", "grass", "gravel"), train_per_class=24, test_per_class=12,
                width=2)


def _tex_arrays(**opts):
    o = tex_mod._check_options({**tex_mod.DATA_DEFAULTS, **opts})
    return tex_mod._load(*(o[k] for k in ("classes", "scales", "stride", "test_fraction",
                                          "train_per_class", "test_per_class", "noise",
                                          "split_seed")))


# ----------------------------------------------------------------------------------- images
def test_bundled_images_are_read_from_the_package():
    img = _skimage.load_gray("brick")
    assert img.shape == (512, 512) and img.dtype == np.float64
    assert 0.0 <= img.min() and img.max() <= 1.0 and not img.flags.writeable
    import skimage.data
    ref = skimage.data.brick() / 255.0        # the bundled file, via scikit-image's own loader
    assert np.array_equal(img, ref)
    assert _skimage.load_gray("coffee").ndim == 2            # RGB -> luminance
    with pytest.raises(GrafsError, match="eagle"):
        _skimage.load_gray("eagle")                          # needs a download: not offered


# --------------------------------------------------------------------------------- textures
def test_patch_boxes_split_each_image_by_region():
    boxes = tex_mod.patch_boxes((100, 260), scales=(1, 2), stride=16, test_fraction=0.25)
    split = 195
    assert boxes["train"] and boxes["test"]
    assert all(x0 + size <= split for _, x0, size in boxes["train"])
    assert all(x0 >= split and x0 + size <= 260 for _, x0, size in boxes["test"])
    assert all(y0 + size <= 100 for y0, _, size in boxes["train"] + boxes["test"])
    # scale 1: 32-pixel windows every 16 pixels; scale 2: 64-pixel windows every 32
    assert (0, 16, 32) in boxes["train"] and (32, 64, 64) in boxes["train"]
    assert (0, 195, 32) in boxes["test"] and (32, 195, 64) in boxes["test"]
    assert sorted({s for *_, s in boxes["test"]}) == [32, 64]


def test_textures_patches_match_a_hand_written_reference():
    xtr, ytr, btr, xte, yte, bte = _tex_arrays(**{k: v for k, v in TINY_TEX.items()
                                                  if k != "width"})
    classes = TINY_TEX["classes"]
    for x, y, boxes in ((xtr, ytr, btr), (xte, yte, bte)):
        for i in (0, 5, len(x) - 1):
            label, y0, x0, size = boxes[i]
            assert label == y[i]
            img = _skimage.load_gray(classes[label])
            s = size // 32
            ref = np.zeros((32, 32))
            for r in range(32):
                for c in range(32):
                    ref[r, c] = img[y0 + s * r:y0 + s * (r + 1), x0 + s * c:x0 + s * (c + 1)].mean()
            ref = (ref - ref.mean()) / ref.std()
            syms = [np.rot90(ref, k) for k in range(4)]
            syms += [m[:, ::-1] for m in syms]
            assert min(np.abs(x[i, 0] - m).max() for m in syms) < 1e-4


def test_textures_no_window_is_shared_by_train_and_test():
    *_, btr, _, _, bte = _tex_arrays(**{k: v for k, v in TINY_TEX.items() if k != "width"})
    for label in range(3):
        right_of_train = max(x0 + size for lab, _, x0, size in btr if lab == label)
        left_of_test = min(x0 for lab, _, x0, _ in bte if lab == label)
        assert right_of_train <= left_of_test


def test_textures_data_shapes_balance_and_determinism():
    t = get_task("textures", **TINY_TEX)
    assert t.train_x.shape == (72, 1, 32, 32) and t.test_x.shape == (36, 1, 32, 32)
    assert t.train_x.dtype == torch.float32 and t.train_y.dtype == torch.int64
    assert torch.bincount(t.train_y).tolist() == [24] * 3
    assert torch.bincount(t.test_y).tolist() == [12] * 3
    flat = t.train_x.flatten(1).double()
    torch.testing.assert_close(flat.mean(1), torch.zeros(72, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(72, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    tex_mod._load.cache_clear()
    again = get_task("textures", seed=3, **TINY_TEX)     # the data do not depend on the seed
    assert torch.equal(again.train_x, t.train_x) and torch.equal(again.test_y, t.test_y)
    other = get_task("textures", split_seed=1, **TINY_TEX)
    assert not torch.equal(other.train_x, t.train_x)
    t.train_x.zero_()                                    # fresh tensors, not the cache
    assert not torch.equal(get_task("textures", **TINY_TEX).train_x, t.train_x)
    noisy = get_task("textures", noise=0.5, **TINY_TEX)
    assert 1.05 < float(noisy.train_x.std()) < 1.2       # sqrt(1 + 0.5^2) = 1.118


def test_textures_model_and_default_space():
    t = get_task("textures", **TINY_TEX)
    model = t.make_model()
    assert len(activation_sites(model, t.activation_types)) == 19      # ResNet20
    assert model.widths == (2, 4, 8)
    assert model(t.train_x[:4]).shape == (4, 3)
    assert get_task("textures", classes=("brick", "moon")).num_classes == 2
    assert t.make_search_space().num_ops == 110                        # the paper's space
    for bad in (dict(classes=("brick",)), dict(classes=("brick", "eagle")),
                dict(scales=(0,)), dict(test_fraction=0.9), dict(noise=-1.0)):
        with pytest.raises(GrafsError):
            get_task("textures", **bad)


def test_textures_one_epoch_of_training():
    torch.manual_seed(0)
    t = get_task("textures", epochs=1, **{**TINY_TEX, "train_per_class": 8})
    model = t.make_model()
    hist = t.fit(model)
    assert len(hist["train_loss"]) == 1 and math.isfinite(hist["train_loss"][0])
    res = t.evaluate(model)
    assert set(res) == {"loss", "accuracy"} and 0.0 <= res["accuracy"] <= 1.0
    assert math.isfinite(res["loss"])


# -------------------------------------------------------------------------------------- inr
def test_pixel_coordinates_and_fourier_features():
    c = inr_mod.pixel_coordinates(2)
    assert c.tolist() == [[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]]
    m = inr_mod.CoordMLP(frequencies=2, hidden=4, depth=1)
    xy = torch.tensor([[0.25, -0.5]])
    f = m.features(xy)[0].tolist()
    ang = [math.pi * 0.25, 2 * math.pi * 0.25, math.pi * -0.5, 2 * math.pi * -0.5]
    ref = [0.25, -0.5] + [math.sin(a) for a in ang] + [math.cos(a) for a in ang]
    assert f == pytest.approx(ref, abs=1e-6)
    assert inr_mod.CoordMLP(frequencies=0).features(xy).tolist() == xy.tolist()
    with pytest.raises(GrafsError, match="coordinates"):
        m(torch.zeros(3, 3))


def test_inr_pixel_split_covers_the_image_once():
    from skimage.transform import resize
    t = get_task("inr", size=16)
    assert t.train_x.shape == (205, 2) and t.test_x.shape == (51, 2)      # 20 % held out
    assert t.train_y.shape == (205, 1) and t.train_y.dtype == torch.float32
    idx = lambda xy: (((xy + 1) * 16 - 1) / 2).round().long()              # centre -> (row, col)
    rc = torch.cat([idx(t.train_x), idx(t.test_x)])
    flat = rc[:, 0] * 16 + rc[:, 1]
    assert sorted(flat.tolist()) == list(range(256))                       # disjoint, complete
    img = resize(_skimage.load_gray("camera"), (16, 16), order=1, anti_aliasing=True,
                 preserve_range=True)
    values = torch.cat([t.train_y, t.test_y])[:, 0].double()
    torch.testing.assert_close(values, torch.tensor(img.reshape(-1))[flat], atol=1e-6, rtol=0)
    again = get_task("inr", seed=4, size=16)                               # fixed across seeds
    assert torch.equal(again.test_x, t.test_x)
    assert not torch.equal(get_task("inr", size=16, split_seed=1).test_x, t.test_x)


def test_inr_psnr_is_computed_from_the_split_mse():
    t = get_task("inr", size=16)
    model = t.make_model()
    res = t.evaluate(model, "test", batch_size=10)
    with torch.no_grad():
        m = float(torch.mean((model(t.test_x) - t.test_y) ** 2))
    assert res["loss"] == pytest.approx(m, rel=1e-5)
    assert res["psnr"] == pytest.approx(10 * math.log10(1 / m), rel=1e-5)
    assert t.metric_name == "psnr" and t.higher_is_better
    assert float(t.metric(model(t.test_x), t.test_y)) == pytest.approx(res["psnr"], rel=1e-4)
    assert inr_mod.psnr_of_mse(0.01) == pytest.approx(20.0)


def test_inr_model_and_default_space_with_sin_cos():
    t = get_task("inr", size=16, hidden=8, depth=4, frequencies=3)
    model = t.make_model()
    assert len(activation_sites(model, t.activation_types)) == 4
    assert model.net[0].in_features == 2 + 4 * 3
    assert model(t.train_x[:5]).shape == (5, 1)
    sp = t.make_search_space()
    assert sp.num_ops == 118
    assert all(h.ops == GRAFS_UNARY + EXTRA_UNARY for h in sp.holes if h.kind == "unary")
    assert "118 candidate ops" in t.summary()["search_space"]
    clone = pickle.loads(pickle.dumps(t))
    assert clone.make_search_space().num_ops == 118
    assert clone.evaluate(clone.make_model())["psnr"] == pytest.approx(
        t.evaluate(t.make_model())["psnr"])
    for bad in (dict(image="eagle"), dict(size=2), dict(frequencies=20), dict(test_fraction=1.0)):
        with pytest.raises(GrafsError):
            get_task("inr", **bad)


def test_inr_one_epoch_of_training_improves_the_fit():
    t = get_task("inr", size=32, epochs=1, batch_size=64)
    model = t.make_model(nn.SiLU)
    before = t.evaluate(model, "train")["psnr"]
    hist = t.fit(model)
    after = t.evaluate(model, "train")["psnr"]
    assert len(hist["train_loss"]) == 1
    assert after > before + 3.0, (before, after)
