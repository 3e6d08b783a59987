"""`rmnet_pruning_18/34`: the network the RMNet authors prune in Figure 6 (fxmeng/RMNet
models/rmnet_pruning.py, trained by train_pruning.py): a ResNet-18/34 of basic blocks (64-512
wide) whose channels are scaled by separate depthwise 1x1 *mask convs*, the scales network slimming
penalises in their code instead of the BN scales:

    block: relu(mask2 * (bn2(conv2(relu(mask1 * bn1(conv1(x))))) + downsample(relu(mask_res * x))))
    stem:  relu(mask1 * bn1(conv1(x)))

mask1 scales the block's inner channels, mask2 its output, mask_res the input channels its shortcut
reads (the channels RM reserves). Masks start at 1. Left out of the authors' module: `running1` and
`running2`, affine-free BNs that only record the statistics their deploy gives the identity BNs
(`rm.recalibrate_identity_bn` measures them from data), and the per-model `prune()`
(`pruning.plain.prune_plain` prunes the converted chain). Their conv init is PyTorch's default, kept.

RM conversion folds every mask into its neighbours, exactly: a mask is a `ChannelScale` item, which
scales the BN (or the merged conv) before it (mask1, mask2: the block's merged conv); mask_res
(followed by a ReLU, on the non-negative block input) makes the shortcut read max(mask, 0) * x
(`rm_residual`'s input_scale): it scales the reserved channels' Dirac rows under `reserve_input`, as
the authors' deploy does, or the shortcut conv's inputs under `reserve_shortcut`. The model's order
comes from its forward (the graph pass); the block converter gives what the graph pass derives.
`plain_channel_masks` gives the mask of every channel of the converted chain (`reserve_input`), which
network slimming ranks them by.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

import rm
from rm.blocks import with_relu
from rm.layer import ConvLayer, relu_slopes
from rm.rules import rm_residual, scale_output
from rm.walker import ChannelScale, unsupported

from .layers import check_widths, resnet_stem
from .registry import register_model


class ChannelMask(nn.Conv2d):
    """A per-channel scale as the authors write it: a depthwise 1x1 conv without bias, weights 1."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 1, groups=channels, bias=False)
        nn.init.ones_(self.weight)

    def scale(self) -> torch.Tensor:
        """The scales in float64 on the model's device (conversion runs there: a GPU, or meta for shapes)."""
        return self.weight.detach().to(torch.float64).flatten()


class MaskedBlock(nn.Module):
    """The authors' ResBlock: a basic block with mask1, mask2 and mask_res (see the module doc)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.mask1 = ChannelMask(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.mask2 = ChannelMask(cout)
        self.mask_res = ChannelMask(cin)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.mask1(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        shortcut = torch.relu(self.mask_res(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.relu(self.mask2(out + shortcut))


@rm.register_converter(ChannelMask, leaf=True)
def _convert_mask(mask: ChannelMask, ctx: rm.Context) -> list:
    return [ChannelScale(mask.scale())]


@rm.register_converter(MaskedBlock)
def _convert_block(block: MaskedBlock, ctx: rm.Context) -> list:
    if not ctx.nonneg:
        raise unsupported(ctx, block, "relu(mask_res * x) is a per-channel scale only on a non-negative "
                                      "input; the block must follow a ReLU (as in rmnet_pruning_*)")
    main = [with_relu(scale_output(ConvLayer.from_conv(block.conv1, block.bn1), block.mask1.scale())),
            ConvLayer.from_conv(block.conv2, block.bn2)]
    shortcut = None if block.downsample is None else ConvLayer.from_conv(*block.downsample)
    chain = rm_residual(main, shortcut, relu_slopes(main[-1].out_channels), True, ctx.downsample,
                        input_scale=block.mask_res.scale().clamp(min=0))
    chain[-1] = scale_output(chain[-1], block.mask2.scale())   # mask2 scales the sum, before the ReLU
    return chain


class RMNetPruning(nn.Module):
    def __init__(self, blocks: Sequence[int], num_classes: int = 1000, stem: str = "imagenet",
                 widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        widths = check_widths(widths, len(blocks), "rmnet_pruning")
        parts = resnet_stem(widths[0], stem)
        self.conv1, self.bn1, self.relu, self.maxpool = parts["conv"], parts["bn"], parts["relu"], parts["pool"]
        self.mask1 = ChannelMask(widths[0])
        cin, self.num_stages = widths[0], len(blocks)
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stage.append(MaskedBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.mask1(self.bn1(self.conv1(x)))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stages(self) -> list[str]:
        return [f"layer{i + 1}" for i in range(self.num_stages)]


def plain_channel_masks(model: RMNetPruning) -> list[torch.Tensor]:
    """|mask| of every conv unit's output channels of the model converted with `reserve_input`, in
    chain order: the stem; per block L1 = [mask1, max(mask_res, 0) of the reserved inputs] and
    L2 = mask2. A channel whose mask is 0 is a constant 0 in the plain chain."""
    if not isinstance(model, RMNetPruning):
        raise TypeError(f"mask scores need an rmnet_pruning model, got {type(model).__name__}")
    masks = [model.mask1.scale().abs()]
    for stage in model.stages():
        for block in getattr(model, stage):
            masks += [torch.cat([block.mask1.scale().abs(), block.mask_res.scale().clamp(min=0)]),
                      block.mask2.scale().abs()]
    return [m.cpu() for m in masks]


@register_model
def rmnet_pruning_18(**kw): return RMNetPruning([2, 2, 2, 2], **kw)
@register_model
def rmnet_pruning_34(**kw): return RMNetPruning([3, 4, 6, 3], **kw)
