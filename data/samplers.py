"""Samplers that shard a dataset over ranks.

`TrainSampler` is DistributedSampler's shuffle-and-pad scheme that can also start mid-epoch, so a
run resumed at step k of an epoch sees exactly the batches it had not seen. `EvalSampler` never pads:
rank r takes indices r, r + world, ..., so every validation sample is counted exactly once (the
ranks' shares differ by at most one sample).
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler[int]):
    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.shuffle, self.seed = shuffle, seed
        self.num_samples = math.ceil(size / num_replicas)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch `epoch`'s order and skip this rank's first `start` samples (for a resume)."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.num_replicas
        order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]  # pad like DDP
        return order[self.rank:total:self.num_replicas]

    def __iter__(self):
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class EvalSampler(Sampler[int]):
    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        self.indices = range(rank, size, num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
