"""Building blocks shared by several families."""
from __future__ import annotations

import torch
import torch.nn as nn


class SEModule(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): x * sigmoid(fc2(relu(fc1(mean(x))))).

    The blocks here apply it after the spatial conv's activation (as RegNetY does), not before the
    residual addition: there the RM-reserved channels can bypass it and the last conv still merges
    the shortcut exactly (docs/ARCHITECTURE.md).
    """

    def __init__(self, channels: int, reduction: int = 16, min_reduced: int = 8):
        super().__init__()
        reduced = max(min_reduced, channels // reduction)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
