"""Building blocks shared by several families."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch.nn as nn

from rm import SqueezeExcite


def se_module(channels: int, reduction: int = 16, min_reduced: int = 8) -> SqueezeExcite:
    """Squeeze-and-Excitation (Hu et al. 2018): x * sigmoid(fc2(relu(fc1(mean(x))))).

    It is `rm.SqueezeExcite` over all channels, the module the plain chain of an SE model keeps.
    The blocks here apply it after the spatial conv's activation (as RegNetY does), not before the
    residual addition: there the RM-reserved channels can bypass it and the last conv still merges
    the shortcut exactly (docs/ARCHITECTURE.md).
    """
    return SqueezeExcite(channels, max(min_reduced, channels // reduction))


def resnet_stem(width: int, stem: str) -> OrderedDict[str, nn.Module]:
    """conv, BN, ReLU and pooling of ResNet's stem: ImageNet 7x7/2 conv + 3x3/2 max-pool, CIFAR
    3x3/1 conv without pooling (an Identity keeps the layer names of both stems equal)."""
    cifar = stem == "cifar"
    return OrderedDict(
        conv=nn.Conv2d(3, width, 3 if cifar else 7, 1 if cifar else 2, 1 if cifar else 3, bias=False),
        bn=nn.BatchNorm2d(width), relu=nn.ReLU(inplace=True), pool=nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1))


def check_widths(widths: Sequence[int], stages: int, family: str) -> list[int]:
    """`widths` must give one width per stage (model.kwargs.widths=[...])."""
    if len(widths) != stages or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"{family} has {stages} stages: widths takes {stages} positive integers, got {list(widths)}")
    return list(widths)


def init_conv_weights(model: nn.Module) -> nn.Module:
    """He initialisation (fan-out, ReLU) of every conv weight, as torchvision's ResNet does."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
