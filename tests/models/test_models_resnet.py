"""CIFAR ResNets: shapes, parameter counts, activation sites, option-A shortcuts."""
import pytest
import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models import (CifarResNet, activation_sites, count_parameters, resnet20, resnet32,
                          resnet_small)
from grafs.models.resnet import BasicBlock, PadShortcut




class CountingReLU(nn.Module):
    """A ReLU that counts how often it runs, to prove forward goes through the module."""

    created = 0

    def __init__(self):
        super().__init__()
        type(self).created += 1
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.relu(x)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_resnet20_shape_params_and_19_relu_sites():
    m = resnet20()
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    # akamaster/pytorch_resnet_cifar10 reports 0.27M for ResNet20: exactly 269,722
    assert count_parameters(m) == 269_722
    sites = activation_sites(m, nn.ReLU)
    # 1 stem + 2 per block x 3 blocks per stage x 3 stages
    assert len(sites) == 1 + 2 * 3 * 3 == 19
    assert len({id(mod) for _, mod in sites}) == 19          # each site its own instance
    assert m.depth == 20


def test_resnet32_one_forward_and_31_sites():
    m = resnet32(num_classes=100)
    m.eval()
    out = m(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 100)
    assert len(activation_sites(m, nn.ReLU)) == 31
    # 0.46M with 10 classes in the reference; head grows by 64*90 + 90 for 100 classes
    assert count_parameters(m) == 464_154 + 64 * 90 + 90


def test_custom_factory_used_at_every_site_and_called_in_forward():
    CountingReLU.created = 0
    m = resnet20(activation=CountingReLU)
    assert CountingReLU.created == 19
    assert activation_sites(m, nn.ReLU) == []                 # no stray nn.ReLU left
    sites = activation_sites(m, CountingReLU)
    assert len(sites) == 19
    m(torch.randn(2, 3, 32, 32))
    assert [mod.calls for _, mod in sites] == [1] * 19        # no functional relu bypass


def test_custom_factory_matches_relu_numerically():
    torch.manual_seed(1)
    a = resnet20()
    b = resnet20(activation=CountingReLU)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 3, 32, 32)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x))


def test_any_spatial_size_and_channels():
    m = resnet20(num_classes=7, in_channels=1)
    for hw in (8, 13, 20):
        assert m(torch.randn(2, 1, hw, hw)).shape == (2, 7)


def test_option_a_shortcut_values():
    sc = PadShortcut(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :8], torch.zeros(2, 8, 4, 4))
    assert torch.equal(y[:, 24:], torch.zeros(2, 8, 4, 4))
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    # odd sizes subsample like the stride-2 conv of the main branch
    block = BasicBlock(16, 32, 2)
    assert block(torch.randn(1, 16, 7, 7)).shape == (1, 32, 4, 4)


def test_no_extra_parameters_in_shortcuts():
    block = BasicBlock(16, 32, 2)
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    assert isinstance(BasicBlock(16, 16, 1).shortcut, nn.Identity)


def test_resnet_small_for_8x8_digits():
    m = resnet_small(num_classes=10, in_channels=1, width=16, blocks_per_stage=1)
    assert m(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert len(activation_sites(m, nn.ReLU)) == 1 + 2 * 3 == 7
    m2 = resnet_small(width=8, blocks_per_stage=2)
    assert len(activation_sites(m2, nn.ReLU)) == 13
    assert m2.linear.in_features == 32


def test_kaiming_init_and_state_dict_keys_unique():
    m = resnet20()
    keys = list(m.state_dict())
    assert len(keys) == len(set(keys))
    assert any(k.startswith("layer3.2.conv2") for k in keys)
    w = m.conv1.weight
    fan_in = w[0].numel()
    assert abs(w.std().item() - (2 / fan_in) ** 0.5) < 0.25 * (2 / fan_in) ** 0.5


@pytest.mark.parametrize("kwargs", [dict(depth=21), dict(depth=2), dict(depth=20, num_classes=0),
                                    dict(depth=None, blocks_per_stage=0),
                                    dict(depth=20, widths=(32, 16, 64))])
def test_bad_arguments_raise_grafs_error(kwargs):
    with pytest.raises(GrafsError):
        CifarResNet(**kwargs)


def test_module_instance_instead_of_factory_is_rejected():
    with pytest.raises(GrafsError, match="factory"):
        resnet20(activation=nn.ReLU())
    with pytest.raises(GrafsError, match="nn.Module"):
        resnet20(activation=lambda: 3)
    with pytest.raises(GrafsError):
        resnet20()(torch.randn(3, 32, 32))
