"""Models of the GRAFS paper (ResNet, ViT, GPT) and small CPU models, all with a
pluggable activation: ``activation`` is a zero-argument factory called once per site.

``MODELS`` maps a name to its constructor; ``get_model(name, **kwargs)`` builds one.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from grafs.errors import GrafsError
from grafs.models.common import (ActivationFactory, activation_sites, check_activation_factory,
                                 count_parameters, make_activation)
from grafs.models.gpt import (GPT, GPT2_VOCAB_SIZE, GPTConfig, gpt_num_params, mini_gpt,
                              small_gpt, tiny_gpt)
from grafs.models.resnet import (BasicBlock, CifarResNet, resnet20, resnet32, resnet44,
                                 resnet56, resnet110, resnet_small)
from grafs.models.small import MLP, Conv1dNet, conv1d_net, mlp
from grafs.models.vit import ViT, vit_small, vit_tiny

__all__ = [
    "ActivationFactory", "activation_sites", "check_activation_factory", "count_parameters",
    "make_activation",
    "CifarResNet", "BasicBlock", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet_small",
    "ViT", "vit_tiny", "vit_small",
    "GPT", "GPTConfig", "GPT2_VOCAB_SIZE", "gpt_num_params", "mini_gpt", "tiny_gpt", "small_gpt",
    "Conv1dNet", "conv1d_net", "MLP", "mlp",
    "MODELS", "DEFAULT_ACTIVATIONS", "get_model",
]

#: name -> constructor (every constructor takes ``activation=`` as a keyword).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet_small": resnet_small,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "mini_gpt": mini_gpt,
    "tiny_gpt": tiny_gpt,
    "small_gpt": small_gpt,
    "conv1d_net": conv1d_net,
    "mlp": mlp,
}

#: the activation each model uses by default (the paper's: ReLU for ResNets, GELU for
#: ViT and GPT).
DEFAULT_ACTIVATIONS: dict[str, type[nn.Module]] = {
    name: (nn.GELU if name.startswith(("vit", "mini_gpt", "tiny_gpt", "small_gpt")) else nn.ReLU)
    for name in MODELS
}


def get_model(name: str, **kwargs) -> nn.Module:
    """Build ``MODELS[name](**kwargs)``; unknown names raise GrafsError listing known ones."""
    try:
        ctor = MODELS[name]
    except (KeyError, TypeError):
        raise GrafsError(f"unknown model {name!r}; known models: "
                         f"{', '.join(sorted(MODELS))}") from None
    return ctor(**kwargs)
