"""Give identity shortcuts a BatchNorm (paper §3.4), so sparse training also learns the importance
of the channels that RM reserves for the shortcut."""
from __future__ import annotations

import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from models.rmnet import RMBlock

RESIDUAL_BLOCKS = (BasicBlock, Bottleneck, RMBlock)


def add_shortcut_bn(model: nn.Module) -> int:
    """In place: every residual block without a downsample gets `downsample = Sequential(BN(C))`.

    Returns how many shortcuts changed. The converter reads such a shortcut as a 1x1 Dirac conv with
    that BN; `rm.convert(..., downsample="reserve_shortcut")` then carries BN(x) in the reserved
    channels, whose statistics rank them for pruning.
    """
    changed = 0
    for m in model.modules():
        if isinstance(m, RESIDUAL_BLOCKS) and m.downsample is None:
            ref = m.conv1.weight
            m.downsample = nn.Sequential(nn.BatchNorm2d(m.conv1.in_channels, device=ref.device, dtype=ref.dtype))
            changed += 1
    return changed


def has_shortcut_bn(model: nn.Module) -> bool:
    return any(isinstance(m, RESIDUAL_BLOCKS) and isinstance(m.downsample, nn.Sequential)
               and len(m.downsample) == 1 for m in model.modules())
