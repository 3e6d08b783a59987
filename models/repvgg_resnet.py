"""RepVGG-18/34 of the RMNet paper (appendix A.2, Table 3): ResNet-18/34 with every basic block's two
convs replaced by two RepVGG layers and the shortcut removed.

Same depth, widths and 7x7 + max-pool stem as ResNet-18/34, so the pair isolates the effect of
RepVGG's branch-free-at-inference design against ResNet's residual connections. The model is an
`nn.Sequential` subclass that keeps `Sequential.forward`, so the converter walks it without a
model-level rule (each `RepVGGBlock` fuses into one 3x3 conv).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch.nn as nn

from .layers import check_widths, init_conv_weights, resnet_stem
from .registry import register_model
from .repvgg import RepVGGBlock


class RepVGGResNet(nn.Sequential):
    """`blocks[i]` ResNet basic blocks in stage i, i.e. 2 x blocks[i] RepVGG layers; the first layer
    of stages 2-4 has stride 2 (where ResNet's downsample block would be)."""

    def __init__(self, blocks: Sequence[int], num_classes: int = 1000, stem: str = "imagenet",
                 widths: Sequence[int] = (64, 128, 256, 512)):
        widths = check_widths(widths, len(blocks), "RepVGG-ResNet")
        stem_parts = resnet_stem(widths[0], stem)   # ResNet's layer names
        layers = OrderedDict(conv1=stem_parts["conv"], bn1=stem_parts["bn"], relu=stem_parts["relu"],
                             maxpool=stem_parts["pool"])
        cin = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(2 * n):
                stage.append(RepVGGBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
            layers[f"layer{i + 1}"] = nn.Sequential(*stage)
        layers.update(avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), fc=nn.Linear(cin, num_classes))
        super().__init__(layers)
        init_conv_weights(self)


@register_model
def repvgg_resnet18(**kw): return RepVGGResNet([2, 2, 2, 2], **kw)
@register_model
def repvgg_resnet34(**kw): return RepVGGResNet([3, 4, 6, 3], **kw)
