"""CIFAR-style ResNets (He et al. 2016, §4.2) with a pluggable activation.

Follows the implementation the GRAFS paper used (akamaster/pytorch_resnet_cifar10):
3×3 stem with 16 channels, three stages of ``n`` BasicBlocks with widths 16/32/64
(stride 2 at the start of stages 2 and 3), "option A" parameter-free shortcuts
(stride-2 subsampling + zero-padding of the new channels), global average pooling and a
linear head; Kaiming-normal init of conv and linear weights. Depth = 6n + 2.

Activation sites: one after the stem, two per block (after bn1, and after the residual
sum), so ``depth - 1`` in total (resnet20: 19, resnet32: 31).

Differences from the reference, none of which change the function computed on 32×32
inputs: the shortcut is a module (not a lambda, so models pickle), pooling is adaptive
(any spatial size works), and ``in_channels`` / ``widths`` are configurable.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from grafs.errors import GrafsError
from grafs.models.common import ActivationFactory, check_activation_factory, make_activation

__all__ = ["PadShortcut", "BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet44",
           "resnet56", "resnet110", "resnet_small"]


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad channels."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """conv3×3-BN-act-conv3×3-BN, + shortcut, act."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 activation: ActivationFactory = nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if planes < in_planes:
                raise GrafsError(f"option-A shortcut needs planes >= in_planes, got "
                                 f"{in_planes} -> {planes}")
            self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.act2(out)


def _kaiming_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(m.weight)


class CifarResNet(nn.Module):
    """ResNet for small images.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...); ignored when ``blocks_per_stage`` is given.
        num_classes: size of the linear head.
        in_channels: input image channels.
        activation: zero-arg factory called once per activation site (default ``nn.ReLU``).
        widths: channels of the three stages (default 16, 32, 64); the stem has widths[0].
        blocks_per_stage: number of BasicBlocks per stage (overrides ``depth``).
    """

    def __init__(self, depth: int | None = 20, num_classes: int = 10, in_channels: int = 3,
                 activation: ActivationFactory = nn.ReLU,
                 widths: Sequence[int] = (16, 32, 64),
                 blocks_per_stage: int | None = None):
        super().__init__()
        activation = check_activation_factory(activation, nn.ReLU)
        if blocks_per_stage is None:
            if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
                raise GrafsError(f"CifarResNet depth must be 6n+2 with n >= 1 "
                                 f"(8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}")
            blocks_per_stage = (depth - 2) // 6
        if not isinstance(blocks_per_stage, int) or blocks_per_stage < 1:
            raise GrafsError(f"blocks_per_stage must be a positive int, got {blocks_per_stage!r}")
        widths = tuple(int(w) for w in widths)
        if len(widths) < 1 or any(w < 1 for w in widths):
            raise GrafsError(f"widths must be positive channel counts, got {widths!r}")
        if any(b < a for a, b in zip(widths, widths[1:])):
            raise GrafsError(f"widths must be non-decreasing (option-A shortcuts pad "
                             f"channels), got {widths!r}")
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(v, int) or v < 1:
                raise GrafsError(f"{name} must be a positive int, got {v!r}")
        # number of weight layers: stem + 2 convs per block + linear head
        self.depth = 2 * blocks_per_stage * len(widths) + 2
        self.blocks_per_stage = blocks_per_stage
        self.widths = widths

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = make_activation(activation)
        in_planes = widths[0]
        self.num_stages = len(widths)
        for i, w in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, w, stride, activation))
                in_planes = w
            # named like the reference implementation: layer1, layer2, layer3
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        self.apply(_kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise GrafsError(f"CifarResNet expects input of shape (B, C, H, W), got "
                             f"{tuple(x.shape)}")
        out = self.act(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = self.pool(out).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10, in_channels: int = 3,
             activation: ActivationFactory = nn.ReLU) -> CifarResNet:
    """ResNet20 (0.27M parameters with 10 classes): 3 blocks per stage, 19 activation sites."""
    return CifarResNet(20, num_classes, in_channels, activation)


def resnet32(num_classes: int = 10, in_channels: int = 3,
             activation: ActivationFactory = nn.ReLU) -> CifarResNet:
    """ResNet32 (0.46M parameters with 10 classes): 5 blocks per stage, 31 activation sites."""
    return CifarResNet(32, num_classes, in_channels, activation)


def resnet44(num_classes: int = 10, in_channels: int = 3,
             activation: ActivationFactory = nn.ReLU) -> CifarResNet:
    return CifarResNet(44, num_classes, in_channels, activation)


def resnet56(num_classes: int = 10, in_channels: int = 3,
             activation: ActivationFactory = nn.ReLU) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels, activation)


def resnet110(num_classes: int = 10, in_channels: int = 3,
              activation: ActivationFactory = nn.ReLU) -> CifarResNet:
    return CifarResNet(110, num_classes, in_channels, activation)


def resnet_small(num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 blocks_per_stage: int = 1,
                 activation: ActivationFactory = nn.ReLU) -> CifarResNet:
    """A small CIFAR-style ResNet for tiny images (e.g. 8×8 digits).

    Stages of widths (width, 2·width, 4·width) with ``blocks_per_stage`` blocks each: on an
    8×8 input the feature maps are 8×8, 4×4, 2×2. Activation sites: 1 + 6·blocks_per_stage.
    """
    if not isinstance(width, int) or width < 1:
        raise GrafsError(f"width must be a positive int, got {width!r}")
    return CifarResNet(None, num_classes, in_channels, activation,
                       widths=(width, 2 * width, 4 * width), blocks_per_stage=blocks_per_stage)
