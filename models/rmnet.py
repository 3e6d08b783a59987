"""RMNet: ResNet-shaped networks of RMNeXt-style inverted residual blocks (paper §4.2, Table 4).

`rmnet{D}x{W}_{C}`: D = 3 x blocks + 2 layers; W = expansion ratio r (a block trains with
(r - 1) x out middle channels, so the converted block, which adds the reserved input channels, is
r x out wide in stride-1 blocks); C = channels per group of the grouped 3x3 in stage 1, doubled
every stage. Attribute names follow the authors' code (`layer0`, `convK`/`bnK`, `downsample`).
`rmnet..._se` adds Squeeze-and-Excitation after the grouped 3x3 (`models.layers.se_module`);
`shortcut_bn=True` gives identity shortcuts a BatchNorm (network slimming through RM, paper §3.4).
`zero_init_last_bn` (default true, as the authors train: fxmeng/RMNet models/rmnext.py:159-160) starts
every block's bn3 at gamma 0, so each block starts as its shortcut.
The RM converter of the block is registered here; the model needs none (the graph pass, rm/graph.py,
reads the order of its forward).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

import rm
from rm.blocks import residual_block

from .layers import check_widths, init_conv_weights, se_module
from .registry import register_model
from .repvgg import RepVGGBlock


class RMBlock(nn.Module):
    """1x1 -> grouped 3x3 (carries the stride) -> 1x1, BN after each, ReLU after the first two and
    after the addition; the shortcut is identity or 1x1 conv + BN. With `se`, an SE module follows
    the 3x3's ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, ratio: int, group_width: int, se: bool = False,
                 shortcut_bn: bool = False):
        super().__init__()
        mid = (ratio - 1) * cout
        if mid % group_width:
            raise ValueError(f"middle width {mid} is not a multiple of the group width {group_width}")
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid // group_width, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.se = se_module(mid) if se else None
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        elif shortcut_bn:
            self.downsample = nn.Sequential(nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.se is not None:
            out = self.se(out)
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


@rm.register_converter(RMBlock)
def _convert_block(block: RMBlock, ctx: rm.Context) -> list:
    return residual_block(block, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")], ctx)


class RMNet(nn.Module):
    def __init__(self, blocks: Sequence[int], ratio: int, group_width: int, num_classes: int = 1000,
                 stem: str = "imagenet", widths: Sequence[int] = (64, 128, 256, 512), se: bool = False,
                 shortcut_bn: bool = False, zero_init_last_bn: bool = True):
        super().__init__()
        widths = check_widths(widths, len(blocks), "this RMNet")
        if stem == "cifar":
            self.layer0 = nn.Sequential(RepVGGBlock(3, widths[0], 1))
        else:
            self.layer0 = nn.Sequential(RepVGGBlock(3, widths[0], 2), RepVGGBlock(widths[0], widths[0], 2))
        cin = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            gw = group_width * 2 ** i
            stage = []
            for j in range(n):
                stage.append(RMBlock(cin, w, 2 if (j == 0 and i > 0) else 1, ratio, gw, se, shortcut_bn))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_conv_weights(self)
        if zero_init_last_bn:
            for m in self.modules():
                if isinstance(m, RMBlock):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer0(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.gap(x), 1))


@register_model
def rmnet26x3_32(**kw): return RMNet([2, 2, 2, 2], 3, 32, **kw)
@register_model
def rmnet41x4_8(**kw): return RMNet([2, 3, 5, 3], 4, 8, **kw)
@register_model
def rmnet41x5_16(**kw): return RMNet([2, 3, 5, 3], 5, 16, **kw)
@register_model
def rmnet50x5_32(**kw): return RMNet([3, 4, 6, 3], 5, 32, **kw)
@register_model
def rmnet50x6_32(**kw): return RMNet([3, 4, 6, 3], 6, 32, **kw)
@register_model
def rmnet101x6_16(**kw): return RMNet([3, 4, 23, 3], 6, 16, **kw)
@register_model
def rmnet152x6_32(**kw): return RMNet([3, 8, 36, 3], 6, 32, **kw)


@register_model
def rmnet26x3_32_se(**kw): return RMNet([2, 2, 2, 2], 3, 32, se=True, **kw)
@register_model
def rmnet41x4_8_se(**kw): return RMNet([2, 3, 5, 3], 4, 8, se=True, **kw)
@register_model
def rmnet41x5_16_se(**kw): return RMNet([2, 3, 5, 3], 5, 16, se=True, **kw)
@register_model
def rmnet50x5_32_se(**kw): return RMNet([3, 4, 6, 3], 5, 32, se=True, **kw)
@register_model
def rmnet50x6_32_se(**kw): return RMNet([3, 4, 6, 3], 6, 32, se=True, **kw)
@register_model
def rmnet101x6_16_se(**kw): return RMNet([3, 4, 23, 3], 6, 16, se=True, **kw)
@register_model
def rmnet152x6_32_se(**kw): return RMNet([3, 8, 36, 3], 6, 32, se=True, **kw)
