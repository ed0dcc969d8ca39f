"""grafs.register: formulas by name in transformers (ACT2FN, hidden_act) and timm (act_layer).

timm is exercised twice: with a stand-in package written here (timm ≥ 0.9's lookup path:
``timm.layers.create_act._ACT_LAYER_DEFAULT``, names lower-cased), which tests both import
orders on every machine, and with the real timm where it imports (not in CI's extras: it pulls
torchvision, whose wheels need a matching torch).
"""
import copy
import importlib
import pickle
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import grafs
from grafs.integrations import RegisteredActivation

SWISH = "{a=1.0}*x*sigmoid({b=1.702}*x)"


def swish_ref(x, a=1.0, b=1.702):
    return a * x * torch.sigmoid(b * x)


@pytest.fixture(autouse=True)
def _unregister_after():
    before = set(grafs.registered())
    yield
    for name in set(grafs.registered()) - before:
        grafs.unregister(name)


FAKE_CREATE_ACT = '''
"""Stand-in for timm.layers.create_act (timm >= 0.9): the same registries and lookup."""
from torch import nn

_ACT_LAYER_DEFAULT = dict(relu=nn.ReLU, gelu=nn.GELU, identity=nn.Identity, timm_only=nn.Identity)
_ACT_LAYER_ME = dict(hard_swish=nn.Hardswish)


def get_act_layer(name="relu"):
    if name is None or not isinstance(name, str):
        return name
    name = name.lower()
    if name in _ACT_LAYER_ME:
        return _ACT_LAYER_ME[name]
    return _ACT_LAYER_DEFAULT[name]


def create_act_layer(name, inplace=None, **kwargs):
    layer = get_act_layer(name)
    return layer(**kwargs) if inplace is None else layer(inplace=inplace, **kwargs)
'''


@pytest.fixture
def fake_timm(tmp_path, monkeypatch):
    """A ``timm`` package on sys.path (any real timm set aside); returns its importer."""
    pkg = tmp_path / "timm"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from timm.layers import create_act_layer, get_act_layer\n")
    (pkg / "layers" / "__init__.py").write_text(
        "from timm.layers.create_act import create_act_layer, get_act_layer\n")
    (pkg / "layers" / "create_act.py").write_text(textwrap.dedent(FAKE_CREATE_ACT))
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "timm" or k.startswith("timm.")}
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield lambda: importlib.import_module("timm")
    for k in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_register_then_import_timm_finds_the_name(fake_timm):
    cls = grafs.register("Grafs_Swish", SWISH, backend="eager")
    assert "timm" not in sys.modules
    timm = fake_timm()                       # imported after registration: the hook adds it
    assert timm.get_act_layer("grafs_swish") is cls      # timm lower-cases names
    act = timm.create_act_layer("Grafs_Swish", inplace=True)
    x = torch.linspace(-4, 4, 33)
    torch.testing.assert_close(act(x), swish_ref(x))
    assert timm.layers.create_act.__loader__.__class__.__name__ != "_Loader"  # the real loader


def test_a_registration_while_the_library_imports_never_breaks_the_import(fake_timm, monkeypatch):
    """The post-import hook iterated the registry while another thread could register
    (RuntimeError: dictionary changed size during iteration, raised into the importer); now
    it iterates a copy under the registry's lock, and a failing hook only warns."""
    import grafs.integrations.registry as reg
    grafs.register("grafs_a", SWISH, backend="eager")
    grafs.register("grafs_b", SWISH, backend="eager")
    added = []
    for target in reg.TARGETS:
        if target.MODULE.startswith("timm"):
            orig = target.add

            def add(mod, key, cls, orig=orig):
                added.append(key)
                if len(added) == 1:          # the registry changes in the middle of the hook
                    reg._REGISTERED["grafs_c"] = reg._REGISTERED["grafs_a"]
                return orig(mod, key, cls)
            monkeypatch.setattr(target, "add", add)
    timm = fake_timm()
    assert timm.get_act_layer("grafs_a") is not None and {"grafs_a", "grafs_b"} <= set(added)
    reg._REGISTERED.pop("grafs_c", None)


def test_import_timm_then_register_finds_the_name_and_unregister_removes_it(fake_timm):
    timm = fake_timm()
    cls = grafs.register("grafs_mix", "0.4756*relu(x) + 0.5244*gelu(x)", backend="eager")
    assert timm.get_act_layer("grafs_mix") is cls
    grafs.unregister("grafs_mix")
    with pytest.raises(KeyError):
        timm.get_act_layer("grafs_mix")
    assert timm.get_act_layer("relu") is nn.ReLU


def test_timm_builtin_names_are_refused(fake_timm):
    timm = fake_timm()
    for name in ("GELU", "hard_swish"):
        with pytest.raises(grafs.GrafsError, match="timm already has an activation"):
            grafs.register(name, "x", backend="eager")
    assert timm.get_act_layer("gelu") is nn.GELU and "GELU" not in grafs.registered()


def test_a_clash_found_at_import_time_warns_and_leaves_timm_alone(fake_timm):
    # a name only timm has (transformers may already be imported by other tests)
    grafs.register("timm_only", "0.5*x", backend="eager")  # free until timm is imported
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        timm = fake_timm()
    assert timm.get_act_layer("timm_only") is nn.Identity
    assert any("'timm_only' not added" in str(m.message) for m in w)


def test_registered_params_have_stable_state_dict_names_and_load():
    cls = grafs.register("grafs_swish", SWISH, backend="eager")
    model = nn.Sequential(nn.Linear(3, 4), cls(inplace=True), nn.Linear(4, 2))
    assert [k for k in model.state_dict() if k.startswith("1.")] == ["1.params.p_a", "1.params.p_b"]
    with torch.no_grad():
        model[1].params["a"].fill_(0.5)
    state = model.state_dict()
    grafs.unregister("grafs_swish")                 # a new process: registered again, then load
    fresh = nn.Sequential(nn.Linear(3, 4), grafs.register("grafs_swish", SWISH, backend="eager")(),
                          nn.Linear(4, 2))
    fresh.load_state_dict(state)
    x = torch.randn(5, 3)
    torch.testing.assert_close(fresh(x), model(x))
    torch.testing.assert_close(fresh[1](x), swish_ref(x, a=0.5))


def test_family_terms_keep_their_state_under_stable_names():
    cls = grafs.register("grafs_dyn", "dyn(gelu(x))", backend="eager")
    a, b = cls(), cls()
    assert list(a.state_dict()) == list(b.state_dict()) and any(k.startswith("terms.") for k in a.state_dict())
    assert a.terms is not b.terms                   # one module per layer: no shared state


def test_registered_activation_deepcopies_and_pickles_with_its_state():
    cls = grafs.register("grafs_swish", SWISH, backend="eager")
    model = nn.Sequential(nn.Linear(3, 3), cls())
    with torch.no_grad():
        model[1].params["a"].fill_(0.25)
    x = torch.randn(4, 3)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone[1]).grafs_name == "grafs_swish" and clone[1].params["a"].item() == 0.25
        torch.testing.assert_close(clone(x), model(x))
    data = pickle.dumps(model)
    grafs.unregister("grafs_swish")                 # the pickle carries the formula itself
    torch.testing.assert_close(pickle.loads(data)(x), model(x))


def test_register_validates_its_arguments():
    for bad in ("", "my act", "1act", 3):
        with pytest.raises(grafs.GrafsError, match="name"):
            grafs.register(bad, "x")
    with pytest.raises(grafs.ParseError):
        grafs.register("grafs_bad", "x +* 2")
    with pytest.raises(grafs.CompileError, match="backend"):
        grafs.register("grafs_bad", "x", backend="tvm")
    with pytest.raises(grafs.GrafsError, match="no activation 'grafs_nope'"):
        grafs.unregister("grafs_nope")
    assert "grafs_bad" not in grafs.registered()
    cls = grafs.register("grafs_ok", "gelu(x)")
    assert issubclass(cls, RegisteredActivation) and grafs.registered()["grafs_ok"] == "gelu(x)"


# --- transformers ---------------------------------------------------------------------------
def _tiny_llama(act: str):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                      hidden_act=act)
    return LlamaForCausalLM(cfg)


def test_transformers_hidden_act_trains_and_its_checkpoint_round_trips(tmp_path):
    pytest.importorskip("transformers", reason="needs the hf extra: pip install grafs[hf]")
    from transformers import LlamaForCausalLM
    from transformers.activations import ACT2CLS, ACT2FN

    cls = grafs.register("grafs_swish", SWISH, backend="eager")
    assert ACT2CLS["grafs_swish"] is cls and isinstance(ACT2FN["grafs_swish"], cls)
    torch.manual_seed(0)
    model = _tiny_llama("grafs_swish")
    acts = [layer.mlp.act_fn for layer in model.model.layers]
    assert all(type(a) is cls for a in acts) and acts[0] is not acts[1]
    ids = torch.randint(0, 32, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(a.params[p].grad.abs() > 0 for a in acts for p in ("a", "b"))
    torch.optim.SGD(model.parameters(), lr=1.0).step()   # activation params leave their init
    assert acts[0].params["a"].item() != 1.0
    assert [k for k in model.state_dict() if "act_fn" in k] == [
        f"model.layers.{i}.mlp.act_fn.params.p_{p}" for i in (0, 1) for p in ("a", "b")]

    model.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.hidden_act == "grafs_swish"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_transformers_imported_first_then_register_unregister():
    pytest.importorskip("transformers", reason="needs the hf extra: pip install grafs[hf]")
    from transformers.activations import ACT2CLS, ACT2FN, get_activation

    assert "transformers.activations" in sys.modules
    cls = grafs.register("grafs_relu_gelu", "0.4756*relu(x) + 0.5244*gelu(x)", backend="eager")
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(get_activation("grafs_relu_gelu")(x), 0.4756 * F.relu(x) + 0.5244 * F.gelu(x))
    with pytest.raises(grafs.GrafsError, match="transformers already has an activation 'gelu'"):
        grafs.register("gelu", "x")
    assert not isinstance(ACT2FN["gelu"], cls)
    grafs.unregister("grafs_relu_gelu")
    assert "grafs_relu_gelu" not in ACT2FN and "grafs_relu_gelu" not in ACT2CLS


# --- the real timm ----------------------------------------------------------------------------
def _import_timm():
    try:
        return importlib.import_module("timm")
    except Exception as e:  # not installed, or its torchvision does not load beside this torch
        pytest.skip(f"needs the timm extra (pip install grafs[timm]); timm does not import here: "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def test_timm_resnet_with_registered_act_layer_trains_a_step():
    timm = _import_timm()
    cls = grafs.register("grafs_mix", "{a=0.5}*relu(x) + {b=0.5}*gelu(x)", backend="eager")
    assert timm.layers.get_act_layer("grafs_mix") is cls
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=4, act_layer="grafs_mix")
    acts = [m for m in model.modules() if isinstance(m, cls)]
    assert len(acts) == 17                          # the stem and two per basic block
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    assert all(a.params["a"].grad is not None for a in acts)
    before = acts[0].params["a"].item()
    opt.step()
    assert acts[0].params["a"].item() != before
    state = model.state_dict()
    assert "act1.params.p_a" in state and "layer1.0.act2.params.p_b" in state
