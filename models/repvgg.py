"""RepVGG (Ding et al. 2021) and the deep RepVGG / RM-RepVGG variants of the RMNet authors.

Attribute names follow the RepVGG authors (`stage0`, `rbr_dense.conv`, `rbr_1x1`, `rbr_identity`,
`linear`) so their checkpoints load unchanged. The RM converters (branch fusion, and Dirac filters for
the channels a partial block passes through) are registered here.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
import torch.nn as nn

import rm
from rm.blocks import conv_bn_branch, with_relu
from rm.layer import identity_slopes, relu_slopes
from rm.ops import dirac, kernel_center
from rm.rules import fuse_branches

from .layers import check_widths
from .registry import register_model


def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


class RepVGGBlock(nn.Module):
    """3x3 conv+BN, 1x1 conv+BN and (when shapes allow) an identity BN, summed, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.rbr_dense = conv_bn(cin, cout, 3, stride, groups)
        self.rbr_1x1 = conv_bn(cin, cout, 1, stride, groups)
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.nonlinearity = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)


class PartialRepVGGBlock(nn.Module):
    """RM-RepVGG layer: the first `reserved` channels pass through untouched, the others are a
    RepVGG block (3x3, 1x1 and identity branches) computed from all input channels.

    Training costs (1 - ratio) of a RepVGG block; after conversion the reserved channels become
    Dirac filters, so the deploy layer is an ordinary 3x3 conv of the full width. The input is the
    output of a ReLU, so the untouched channels are non-negative and survive the deploy ReLU.
    """

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        if not 0 < ratio < 1:
            raise ValueError(f"RM ratio must be in (0, 1), got {ratio}")
        self.reserved = int(channels * ratio)   # rounded down, as the authors' RMBlock (rmplanes) does
        computed = channels - self.reserved
        self.rbr_dense = conv_bn(channels, computed, 3, 1)
        self.rbr_1x1 = conv_bn(channels, computed, 1, 1)
        self.rbr_identity = nn.BatchNorm2d(computed)
        self.nonlinearity = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, rest = x[:, : self.reserved], x[:, self.reserved:]
        out = self.nonlinearity(self.rbr_dense(x) + self.rbr_1x1(x) + self.rbr_identity(rest))
        return torch.cat([kept, out], dim=1)


def _identity_bn(block: nn.Module) -> rm.BNParams | None:
    return rm.BNParams.from_module(block.rbr_identity) if block.rbr_identity is not None else None


@rm.register_converter(RepVGGBlock)
def _convert_block(block: RepVGGBlock, ctx: rm.Context) -> list:
    return [with_relu(fuse_branches([conv_bn_branch(block.rbr_dense), conv_bn_branch(block.rbr_1x1)],
                                    _identity_bn(block)))]


@rm.register_converter(PartialRepVGGBlock)
def _convert_partial_block(block: PartialRepVGGBlock, ctx: rm.Context) -> list:
    n = block.reserved
    fused = fuse_branches([conv_bn_branch(block.rbr_dense), conv_bn_branch(block.rbr_1x1)], _identity_bn(block),
                          identity_offset=n)
    # The reserved channels come first: Dirac filters that ride through the ReLU (input >= 0) or
    # through PReLU slope 1 otherwise.
    carry = dirac(n, fused.kernel, kernel_center(fused), in_channels=fused.in_channels)
    keep = relu_slopes(n) if ctx.nonneg else identity_slopes(n)
    return [replace(fused, weight=torch.cat([carry, fused.weight]),
                    bias=torch.cat([torch.zeros(n, dtype=torch.float64), fused.bias]),
                    act=torch.cat([keep, relu_slopes(fused.out_channels)]))]


class RepVGG(nn.Module):
    def __init__(self, num_blocks: Sequence[int], widths: Sequence[int], num_classes: int = 1000,
                 stem: str = "imagenet", groups_at: dict[int, int] | None = None,
                 rm_ratio: float = 0.0):
        """`widths` are the four stage widths; the stem is min(64, widths[0]) wide.

        `groups_at` maps a 1-based layer index (counted over stage1..stage4) to a group count.
        `rm_ratio` > 0 replaces every other stride-1 block by a `PartialRepVGGBlock`.
        """
        super().__init__()
        widths = check_widths(widths, len(num_blocks), "RepVGG")
        groups_at = groups_at or {}
        cifar = stem == "cifar"
        self.in_planes = min(64, widths[0])
        self.stage0 = RepVGGBlock(3, self.in_planes, stride=1 if cifar else 2)
        self.layer_idx = 1
        strides = [1 if cifar else 2, 2, 2, 2]
        for i, (n, w, s) in enumerate(zip(num_blocks, widths, strides)):
            setattr(self, f"stage{i + 1}", self._make_stage(w, n, s, groups_at, rm_ratio))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[-1], num_classes)

    def _make_stage(self, planes, n, stride, groups_at, rm_ratio) -> nn.Sequential:
        blocks = []
        for i, s in enumerate([stride] + [1] * (n - 1)):
            if rm_ratio and s == 1 and self.in_planes == planes and i % 2 == 1:
                blocks.append(PartialRepVGGBlock(planes, rm_ratio))
            else:
                blocks.append(RepVGGBlock(self.in_planes, planes, s, groups_at.get(self.layer_idx, 1)))
            self.in_planes = planes
            self.layer_idx += 1
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(5):
            x = getattr(self, f"stage{i}")(x)
        return self.linear(torch.flatten(self.gap(x), 1))


_G2 = {i: 2 for i in range(2, 27, 2)}
_G4 = {i: 4 for i in range(2, 27, 2)}
_A, _B = [2, 4, 14, 1], [4, 6, 16, 1]


def _repvgg(num_blocks, a: float, b: float, groups=None, widths: Sequence[int] | None = None, **kw) -> RepVGG:
    widths = widths if widths is not None else [int(64 * a), int(128 * a), int(256 * a), int(512 * b)]
    return RepVGG(num_blocks, widths, groups_at=groups, **kw)


@register_model
def repvgg_a0(**kw): return _repvgg(_A, 0.75, 2.5, **kw)
@register_model
def repvgg_a1(**kw): return _repvgg(_A, 1, 2.5, **kw)
@register_model
def repvgg_a2(**kw): return _repvgg(_A, 1.5, 2.75, **kw)
@register_model
def repvgg_b0(**kw): return _repvgg(_B, 1, 2.5, **kw)
@register_model
def repvgg_b1(**kw): return _repvgg(_B, 2, 4, **kw)
@register_model
def repvgg_b1g2(**kw): return _repvgg(_B, 2, 4, _G2, **kw)
@register_model
def repvgg_b1g4(**kw): return _repvgg(_B, 2, 4, _G4, **kw)
@register_model
def repvgg_b2(**kw): return _repvgg(_B, 2.5, 5, **kw)
@register_model
def repvgg_b2g4(**kw): return _repvgg(_B, 2.5, 5, _G4, **kw)
@register_model
def repvgg_b3(**kw): return _repvgg(_B, 3, 5, **kw)
@register_model
def repvgg_b3g4(**kw): return _repvgg(_B, 3, 5, _G4, **kw)


def _deep(depth: int, rm_ratio: float = 0.0, widths: Sequence[int] = (64, 128, 256, 512), **kw) -> RepVGG:
    # Depth counts 3x3 layers: the stem plus four stages of one stride-2 and k stride-1 layers.
    k = (depth - 5) // 4
    return RepVGG([k + 1] * 4, widths, rm_ratio=rm_ratio, **kw)


@register_model
def repvgg21(**kw): return _deep(21, **kw)
@register_model
def repvgg37(**kw): return _deep(37, **kw)
@register_model
def repvgg69(**kw): return _deep(69, **kw)
@register_model
def repvgg133(**kw): return _deep(133, **kw)
# The paper's RM ratio per depth is the default; files of the authors trained with another ratio load
# with it (artifacts reads it from the weights, or model.kwargs.rm_ratio=...).
@register_model
def rmrepvgg21(rm_ratio=0.25, **kw): return _deep(21, rm_ratio, **kw)
@register_model
def rmrepvgg37(rm_ratio=0.25, **kw): return _deep(37, rm_ratio, **kw)
@register_model
def rmrepvgg69(rm_ratio=0.5, **kw): return _deep(69, rm_ratio, **kw)
@register_model
def rmrepvgg133(rm_ratio=0.75, **kw): return _deep(133, rm_ratio, **kw)
