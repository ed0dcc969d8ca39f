"""Small models for the built-in CPU tasks: a 1-D CNN (MNIST-1D) and an MLP."""
from __future__ import annotations

import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models.common import ActivationFactory, check_activation_factory, make_activation

__all__ = ["Conv1dNet", "conv1d_net", "MLP", "mlp"]


def _positive_int(name: str, v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise GrafsError(f"{name} must be a positive int, got {v!r}")
    return v


class Conv1dNet(nn.Module):
    """The MNIST-1D reference CNN (mnist1d ``ConvBase``) with a pluggable activation.

    ``Conv1d(in, C, 5, stride 2, pad 1) → act → Conv1d(C, C, 3, 2, 1) → act →
    Conv1d(C, C, 3, 2, 1) → act → flatten → Linear``; 3 activation sites. With the MNIST-1D
    length 40 the feature lengths are 19, 10, 5. Inputs may be (B, L) or (B, in_channels, L).
    """

    def __init__(self, num_classes: int = 10, length: int = 40, channels: int = 32,
                 in_channels: int = 1, activation: ActivationFactory = nn.ReLU):
        super().__init__()
        activation = check_activation_factory(activation, nn.ReLU)
        _positive_int("num_classes", num_classes)
        _positive_int("channels", channels)
        _positive_int("in_channels", in_channels)
        _positive_int("length", length)
        out_len = (length + 2 - 5) // 2 + 1
        out_len = (out_len + 2 - 3) // 2 + 1
        out_len = (out_len + 2 - 3) // 2 + 1
        if length < 4 or out_len < 1:
            raise GrafsError(f"Conv1dNet needs length >= 4, got {length}")
        self.length = length
        self.in_channels = in_channels
        self.conv1 = nn.Conv1d(in_channels, channels, 5, stride=2, padding=1)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.act2 = make_activation(activation)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.act3 = make_activation(activation)
        self.linear = nn.Linear(channels * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1] != self.in_channels or x.shape[2] != self.length:
            raise GrafsError(f"Conv1dNet expects input of shape (B, {self.length}) or "
                             f"(B, {self.in_channels}, {self.length}), got {tuple(x.shape)}")
        h = self.act1(self.conv1(x))
        h = self.act2(self.conv2(h))
        h = self.act3(self.conv3(h))
        return self.linear(h.flatten(1))


def conv1d_net(num_classes: int = 10, length: int = 40, channels: int = 32,
               activation: ActivationFactory = nn.ReLU) -> Conv1dNet:
    """MNIST-1D CNN: 3 conv layers of ``channels`` filters, 3 activation sites."""
    return Conv1dNet(num_classes, length, channels, 1, activation)


class MLP(nn.Module):
    """``depth`` hidden ``Linear → activation`` layers of width ``hidden``, then a linear head.

    Inputs with more than 2 dimensions are flattened from dim 1.
    """

    def __init__(self, in_features: int, hidden: int = 64, num_classes: int = 10,
                 depth: int = 2, activation: ActivationFactory = nn.ReLU):
        super().__init__()
        activation = check_activation_factory(activation, nn.ReLU)
        _positive_int("in_features", in_features)
        _positive_int("hidden", hidden)
        _positive_int("num_classes", num_classes)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise GrafsError(f"depth must be a non-negative int, got {depth!r}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), make_activation(activation)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.in_features = in_features
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = x.flatten(1)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise GrafsError(f"MLP expects (B, {self.in_features}) inputs, got {tuple(x.shape)}")
        return self.net(x)


def mlp(in_features: int, hidden: int = 64, num_classes: int = 10, depth: int = 2,
        activation: ActivationFactory = nn.ReLU) -> MLP:
    """An MLP with ``depth`` activation sites."""
    return MLP(in_features, hidden, num_classes, depth, activation)
