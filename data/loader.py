"""DataLoaders sharded over the ranks of the default process group (one rank without one)."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, RandomSampler, default_collate

from .datasets import build_dataset
from .samplers import EvalSampler, TrainSampler
from .transforms import build_transform


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def worker_count(requested: int | None) -> int:
    """`requested` loader workers, or (None) the CPUs available to this process per local rank."""
    if requested is not None:
        return requested
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(min(len(os.sched_getaffinity(0)) // local - 1, 8), 0)


def collate_decodable(batch: list) -> Any:
    """default_collate over the samples that are not None (images an evaluation dataset skipped);
    None for a batch of skipped images only."""
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None


def build_loader(cfg: Any, split: str, batch_size: int, workers: int | None = None, train: bool | None = None,
                 seed: int = 0, drop_last: bool | None = None) -> DataLoader:
    """Loader over `split` of the data config `cfg`, sharded over the current process group.

    `train` (default: split == "train") selects augmentation, shuffling with a `TrainSampler`
    (call `loader.sampler.set_epoch(epoch, start)` each epoch; reseeding `loader.generator` too makes
    worker-side augmentation reproducible per epoch) and dropping the last partial batch;
    otherwise an `EvalSampler` gives each rank a disjoint share and every sample is seen once, and
    images skipped as undecodable (`data.bad_images=skip`) are left out of the batches.
    """
    train = split == "train" if train is None else train
    dataset = build_dataset(cfg, split, build_transform(cfg, train=train), substitute_bad=train)
    world, rank = _world()
    sampler = TrainSampler(len(dataset), world, rank, shuffle=True, seed=seed) if train \
        else EvalSampler(len(dataset), world, rank)
    workers = worker_count(workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), drop_last=train if drop_last is None else drop_last,
                      collate_fn=None if train else collate_decodable,
                      generator=torch.Generator().manual_seed(seed + rank))


def calibration_loader(cfg: Any, batches: int, batch_size: int, workers: int | None = None,
                       seed: int = 0) -> DataLoader:
    """`batches` batches of random training images without augmentation (the same on every rank):
    data for measuring a model's activation statistics. Random, because class-folder datasets
    (ImageNet) are stored class by class."""
    dataset = build_dataset(cfg, "train", build_transform(cfg, train=False))
    sampler = RandomSampler(dataset, num_samples=min(batches * batch_size, len(dataset)),
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=worker_count(workers))
