"""Exponential moving average of a model's weights, updated without a host sync.

torch.optim.swa_utils.AveragedModel, used before, keeps its update count `n_averaged` in a tensor:
built without `device` it lives on the CPU and is copied to the GPU for every dtype group at every
update, on the GPU `bool(n_averaged == 0)` waits for the device, and its EMA function loops over the
integer buffers (BatchNorm's num_batches_tracked) in Python. Here the count is a Python int (every
rank makes the same updates), floating tensors take one foreach lerp and the integer buffers one
foreach copy, as in timm's ModelEmaV3: an update only launches kernels. The count is part of the
state, so a resumed run continues the same average instead of restarting it from the live weights.
"""
from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn


class EMA:
    """`module`: a copy of the model (same device and memory format) holding the averaged weights
    and buffers; the first `update` copies the live ones, each later one moves them `1 - decay` of
    the way towards the live ones."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        floats: tuple[list, list] = ([], [])
        others: tuple[list, list] = ([], [])
        pairs = zip(itertools.chain(self.module.parameters(), self.module.buffers()),
                    itertools.chain(model.parameters(), model.buffers()), strict=True)
        for mine, live in pairs:
            group = floats if mine.is_floating_point() else others
            group[0].append(mine)
            group[1].append(live.detach())
        if self.updates == 0:
            torch._foreach_copy_(*floats)
        else:
            torch._foreach_lerp_(*floats, 1.0 - self.decay)
        if others[0]:
            torch._foreach_copy_(*others)
        self.updates += 1

    def load(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        """Continue an average: the checkpoint's EMA weights and its number of updates."""
        self.module.load_state_dict(weights)
        self.updates = int(updates)
