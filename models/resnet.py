"""ResNet and ResNeXt built from torchvision's own blocks.

State-dict keys equal torchvision's (`conv1`, `bn1`, `layerN.i.convK`, `downsample.0/1`, `fc`), so
torchvision checkpoints load unchanged, and the converter's torchvision block rules cover these
models too. The CIFAR stem is a stride-1 3x3 conv without max-pool; CIFAR ResNet-20..110 have three
stages 16/32/64 wide (He et al. 2016) with 1x1-conv projection shortcuts. `se_resnet*` add
Squeeze-and-Excitation after the block's (last) 3x3 activation (`models.layers.se_module`).
`shortcut_bn=True` gives every identity shortcut a BatchNorm (network slimming through RM, paper
§3.4: its scales rank the channels RM reserves for the shortcut). The blocks are torchvision's, whose
converters `rm` has; the model needs none (the graph pass, rm/graph.py, reads its forward).
"""
from __future__ import annotations

from typing import Sequence, Type, Union

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .layers import check_widths, init_conv_weights, resnet_stem, se_module
from .registry import register_model

Block = Type[Union[BasicBlock, Bottleneck]]


class SEBasicBlock(BasicBlock):
    """torchvision's basic block with SE after the first 3x3's ReLU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.se = se_module(self.conv1.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class SEBottleneck(Bottleneck):
    """torchvision's bottleneck with SE after the 3x3's ReLU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.se = se_module(self.conv2.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 1000,
                 stem: str = "imagenet", widths: Sequence[int] = (64, 128, 256, 512),
                 groups: int = 1, width_per_group: int = 64, zero_init_residual: bool = False,
                 shortcut_bn: bool = False):
        super().__init__()
        self.groups, self.base_width, self.shortcut_bn = groups, width_per_group, shortcut_bn
        widths = check_widths(widths, len(layers), "this ResNet")
        self.inplanes = widths[0]
        parts = resnet_stem(self.inplanes, stem)
        self.conv1, self.bn1, self.relu, self.maxpool = parts["conv"], parts["bn"], parts["relu"], parts["pool"]
        self.num_stages = len(layers)
        for i, (n, w) in enumerate(zip(layers, widths)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, w, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

        init_conv_weights(self)
        if zero_init_residual:
            for m in self.modules():
                last_bn = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(last_bn.weight)

    def _shortcut(self, cout: int, stride: int) -> nn.Sequential | None:
        if stride != 1 or self.inplanes != cout:
            return nn.Sequential(nn.Conv2d(self.inplanes, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        return nn.Sequential(nn.BatchNorm2d(cout)) if self.shortcut_bn else None

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            s = stride if i == 0 else 1
            shortcut = self._shortcut(planes * block.expansion, s)
            layers.append(block(self.inplanes, planes, s, shortcut, self.groups, self.base_width))
            self.inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))



@register_model
def resnet18(**kw): return ResNet(BasicBlock, [2, 2, 2, 2], **kw)
@register_model
def resnet34(**kw): return ResNet(BasicBlock, [3, 4, 6, 3], **kw)
@register_model
def resnet50(**kw): return ResNet(Bottleneck, [3, 4, 6, 3], **kw)
@register_model
def resnet101(**kw): return ResNet(Bottleneck, [3, 4, 23, 3], **kw)
@register_model
def resnet152(**kw): return ResNet(Bottleneck, [3, 8, 36, 3], **kw)
@register_model
def resnext50_32x4d(**kw): return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kw)
@register_model
def resnext101_32x8d(**kw): return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=8, **kw)
@register_model
def se_resnet18(**kw): return ResNet(SEBasicBlock, [2, 2, 2, 2], **kw)
@register_model
def se_resnet34(**kw): return ResNet(SEBasicBlock, [3, 4, 6, 3], **kw)
@register_model
def se_resnet50(**kw): return ResNet(SEBottleneck, [3, 4, 6, 3], **kw)
@register_model
def se_resnet101(**kw): return ResNet(SEBottleneck, [3, 4, 23, 3], **kw)


def _cifar_resnet(depth: int, widths=(16, 32, 64), **kw) -> ResNet:
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n, n, n], widths=widths, **kw)


@register_model(stems=("cifar",))
def resnet20(**kw): return _cifar_resnet(20, **kw)
@register_model(stems=("cifar",))
def resnet32(**kw): return _cifar_resnet(32, **kw)
@register_model(stems=("cifar",))
def resnet44(**kw): return _cifar_resnet(44, **kw)
@register_model(stems=("cifar",))
def resnet56(**kw): return _cifar_resnet(56, **kw)
@register_model(stems=("cifar",))
def resnet110(**kw): return _cifar_resnet(110, **kw)
