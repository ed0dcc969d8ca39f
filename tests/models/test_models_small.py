"""Conv1dNet / MLP, the model registry and the shared helpers."""
import pytest
import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models import (DEFAULT_ACTIVATIONS, MODELS, activation_sites, conv1d_net,
                          count_parameters, get_model, mlp)




class Marker(nn.Module):
    def forward(self, x):
        return x.clamp(min=0)


def test_conv1d_net_shapes_sites_and_param_count():
    torch.manual_seed(0)
    m = conv1d_net(num_classes=10, length=40, channels=32)
    x = torch.randn(5, 40)
    out = m(x)
    assert out.shape == (5, 10)
    torch.testing.assert_close(m(x.unsqueeze(1)), out)
    assert len(activation_sites(m, nn.ReLU)) == 3
    # lengths 40 -> 19 -> 10 -> 5; convs 1*32*5+32, 2 x (32*32*3+32), head 32*5*10+10
    assert count_parameters(m) == (32 * 5 + 32) + 2 * (32 * 32 * 3 + 32) + (160 * 10 + 10)
    with pytest.raises(GrafsError):
        m(torch.randn(5, 41))


def test_conv1d_custom_factory_matches_relu():
    torch.manual_seed(0)
    a = conv1d_net()
    b = conv1d_net(activation=Marker)
    b.load_state_dict(a.state_dict())
    assert len(activation_sites(b, Marker)) == 3 and activation_sites(b, nn.ReLU) == []
    x = torch.randn(4, 40)
    torch.testing.assert_close(a(x), b(x))


def test_mlp_depth_sites_and_flatten():
    m = mlp(64, hidden=16, num_classes=3, depth=4, activation=nn.GELU)
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert len(activation_sites(m, nn.GELU)) == 4
    assert count_parameters(mlp(10, 5, 2, depth=0)) == 22
    with pytest.raises(GrafsError):
        mlp(10, depth=-1)


def test_registry_contents_and_defaults():
    assert {"resnet20", "resnet32", "resnet_small", "vit_tiny", "vit_small", "mini_gpt",
            "tiny_gpt", "small_gpt", "conv1d_net", "mlp"} <= set(MODELS)
    assert DEFAULT_ACTIVATIONS["resnet20"] is nn.ReLU
    assert DEFAULT_ACTIVATIONS["vit_tiny"] is nn.GELU
    assert DEFAULT_ACTIVATIONS["mini_gpt"] is nn.GELU
    small_kwargs = {"mlp": {"in_features": 8}, "mini_gpt": {"vocab_size": 16, "block_size": 8}}
    for name, ctor in MODELS.items():
        if name in ("tiny_gpt", "small_gpt", "resnet110", "resnet56", "resnet44"):
            continue  # large; built in their own tests or identical in structure
        model = ctor(**small_kwargs.get(name, {}))
        want = DEFAULT_ACTIVATIONS[name]
        assert len(activation_sites(model, want)) > 0, name
        other = nn.ReLU if want is nn.GELU else nn.GELU
        assert activation_sites(model, other) == [], name


def test_get_model_and_unknown_name():
    m = get_model("resnet_small", num_classes=4)
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(GrafsError, match="resnet20"):
        get_model("resnet21")


def test_activation_sites_outermost_match_only():
    inner = nn.Sequential(nn.ReLU())
    model = nn.Sequential(nn.Linear(2, 2), inner, nn.GELU())
    names = [n for n, _ in activation_sites(model, (nn.ReLU, nn.GELU))]
    assert names == ["1.0", "2"]
    assert [n for n, _ in activation_sites(model, nn.Sequential)] == ["1"]
