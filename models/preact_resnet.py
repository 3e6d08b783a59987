"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Blocks are BN -> ReLU -> conv, twice (basic) or three times (bottleneck), added to the shortcut
with nothing after the addition. The stem ends with BN + ReLU, so the first block skips its own
pre-activation; a projection shortcut reads the pre-activated input (as in the authors' code); a
final BN + ReLU precedes the pooling. CIFAR sizes use the 3x3 stride-1 stem and four stages
64..512 wide (the common CIFAR PreActResNet-18/34); ImageNet sizes use the 7x7 stem and max-pool.

`bnK` normalises the input of `convK` (the authors' naming), so the BN after a conv is the next
index: the converter (registered here) reads a branch as (conv1, bn2), (conv2, bn3), ... with the
last conv linear.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

import rm
from rm.blocks import branch_layers, preact_residual
from rm.layer import PreActivation
from rm.rules import rm_residual

from .layers import check_widths, init_conv_weights, resnet_stem
from .registry import register_model


class _PreActUnit(nn.Module):
    """Pre-activation, shortcut and addition; subclasses add the branch convs and `residual`."""

    expansion = 1
    convs = 0

    def __init__(self, cin: int, planes: int, stride: int, preact: bool):
        super().__init__()
        cout = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(cin) if preact else None
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def residual(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn1(x)) if self.bn1 is not None else x
        return self.residual(a) + (x if self.shortcut is None else self.shortcut(a))


class PreActBlock(_PreActUnit):
    convs = 2

    def __init__(self, cin: int, planes: int, stride: int = 1, preact: bool = True):
        super().__init__(cin, planes, stride, preact)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)

    def residual(self, a: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn2(self.conv1(a))))


class PreActBottleneck(_PreActUnit):
    expansion = 4
    convs = 3

    def __init__(self, cin: int, planes: int, stride: int = 1, preact: bool = True):
        super().__init__(cin, planes, stride, preact)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)

    def residual(self, a: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn2(self.conv1(a)))
        return self.conv3(self.relu(self.bn3(self.conv2(out))))


@rm.register_converter(PreActBlock, PreActBottleneck)
def _convert_block(block: _PreActUnit, ctx: rm.Context) -> list:
    n = block.convs
    main = branch_layers(block, [(f"conv{i}", f"bn{i + 1}") for i in range(1, n)] + [(f"conv{n}", None)])
    shortcut = rm.ConvLayer.from_conv(block.shortcut) if block.shortcut is not None else None
    if block.bn1 is None:  # first block: the stem's BN + ReLU already activated the input
        return rm_residual(main, shortcut, None, ctx.nonneg, ctx.downsample)
    bn = rm.BNParams.from_module(block.bn1)
    if shortcut is not None:  # the projection reads the activated input; x itself is not needed
        return [PreActivation(bn, keep_raw=False), *rm_residual(main, shortcut, None, True, ctx.downsample)]
    return preact_residual(main, None, bn)  # the identity shortcut reads the signed x


class PreActResNet(nn.Sequential):
    def __init__(self, block: type[_PreActUnit], layers: Sequence[int], num_classes: int = 1000,
                 stem: str = "imagenet", widths: Sequence[int] = (64, 128, 256, 512)):
        widths = check_widths(widths, len(layers), "this pre-activation ResNet")
        cin = widths[0]
        stages = [("stem", nn.Sequential(resnet_stem(cin, stem)))]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, 2 if (j == 0 and i > 0) else 1, preact=(i, j) != (0, 0)))
                cin = w * block.expansion
            stages.append((f"layer{i + 1}", nn.Sequential(*blocks)))
        stages += [("norm", nn.BatchNorm2d(cin)), ("relu", nn.ReLU(inplace=True)),
                   ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1)), ("fc", nn.Linear(cin, num_classes))]
        super().__init__(OrderedDict(stages))
        init_conv_weights(self)


@register_model
def preactresnet18(**kw): return PreActResNet(PreActBlock, [2, 2, 2, 2], **kw)
@register_model
def preactresnet34(**kw): return PreActResNet(PreActBlock, [3, 4, 6, 3], **kw)
@register_model
def preactresnet50(**kw): return PreActResNet(PreActBottleneck, [3, 4, 6, 3], **kw)
@register_model
def preactresnet101(**kw): return PreActResNet(PreActBottleneck, [3, 4, 23, 3], **kw)
@register_model
def preactresnet152(**kw): return PreActResNet(PreActBottleneck, [3, 8, 36, 3], **kw)
