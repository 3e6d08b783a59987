"""DataLoaders sharded over the ranks of the default process group (one rank without one).

Workers decode and augment to uint8 images; `DeviceLoader` moves each batch to the device it is used
on and scales and normalises it there (as timm's PrefetchLoader does), so a quarter of the bytes go
through shared memory and pinning, and the workers skip the float arithmetic.
"""
from __future__ import annotations

import os
import random
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, default_collate, get_worker_info
from torch.utils.data._utils.worker import _generate_state  # the numpy seed DataLoader gives a worker

from .datasets import build_dataset
from .samplers import EvalSampler, TrainSampler
from .transforms import build_transform


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def worker_count(requested: int | None) -> int:
    """`requested` loader workers, or (None) the CPUs available to this process per local rank, less one
    for the rank's own process. No cap: a worker decodes and augments ~700 ImageNet training images/s
    (benchmarks/results/loader_throughput.md), a GPU trains thousands."""
    if requested is not None:
        return requested
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(len(os.sched_getaffinity(0)) // local - 1, 0)


def collate_decodable(batch: list) -> Any:
    """default_collate over the samples that are not None (images an evaluation dataset skipped);
    None for a batch of skipped images only."""
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None


class _PassSeeded(Sampler):
    """The shard sampler's indices, each with the seed of the current pass: (seed, index)."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.seed = sampler, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = self.seed
        return ((seed, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _WorkerSeeded(Dataset):
    """Seeds a persistent worker at its first sample of each pass exactly as DataLoader seeds a fresh
    worker (base seed + worker id for `random` and torch, its numpy state), so a pass's augmentation
    depends on the loader's generator alone, as it did with workers started per pass. In the main
    process (no workers) nothing is reseeded: augmentation draws from the global generator as before."""

    def __init__(self, dataset: Dataset):
        self.dataset, self.seed = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        worker = get_worker_info()
        if worker is not None and seed != self.seed:
            self.seed = seed
            random.seed(seed + worker.id)
            torch.manual_seed(seed + worker.id)
            np.random.seed(_generate_state(seed, worker.id))
        return self.dataset[index]


class DeviceLoader:
    """Batches of (float32 images normalised with `mean` and `std`, targets) on `device`, from workers
    that yield uint8 images. `sampler` and `generator` are the shard sampler and the generator whose
    state seeds each pass's workers (reseed it to repeat a pass's augmentation); `dataset` and
    `loader` the underlying dataset and DataLoader. A batch of skipped images only stays None."""

    def __init__(self, dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, mean, std,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None, **kw: Any):
        self.dataset, self.sampler, self.generator = dataset, sampler, generator
        self._seeded = _PassSeeded(sampler)
        self.loader = DataLoader(_WorkerSeeded(dataset), batch_size=batch_size, sampler=self._seeded,
                                 num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=torch.cuda.is_available(), generator=torch.Generator(), **kw)
        self.device = torch.device(device)
        # The same operations as transforms' ToDtype(scale=True) and Normalize, batched: the same floats.
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1).to(self.device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        # One draw per pass from the visible generator (the global one if None), as DataLoader makes.
        self._seeded.seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        for batch in self.loader:
            yield None if batch is None else self._prepare(*batch)

    def _prepare(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        return images.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std), targets


def build_loader(cfg: Any, split: str, batch_size: int, workers: int | None = None, train: bool | None = None,
                 seed: int = 0, drop_last: bool | None = None, device: torch.device | str = "cpu") -> DeviceLoader:
    """Loader over `split` of the data config `cfg`, sharded over the current process group, whose
    batches are normalised float32 images on `device`.

    `train` (default: split == "train") selects augmentation, shuffling with a `TrainSampler`
    (call `loader.sampler.set_epoch(epoch, start)` each epoch; reseeding `loader.generator` too makes
    worker-side augmentation reproducible per epoch) and dropping the last partial batch;
    otherwise an `EvalSampler` gives each rank a disjoint share and every sample is seen once, and
    images skipped as undecodable (`data.bad_images=skip`) are left out of the batches.
    """
    train = split == "train" if train is None else train
    dataset = build_dataset(cfg, split, build_transform(cfg, train=train, normalize=False), substitute_bad=train)
    world, rank = _world()
    sampler = TrainSampler(len(dataset), world, rank, shuffle=True, seed=seed) if train \
        else EvalSampler(len(dataset), world, rank)
    return DeviceLoader(dataset, sampler, batch_size, worker_count(workers), cfg.mean, cfg.std, device,
                        torch.Generator().manual_seed(seed + rank),
                        drop_last=train if drop_last is None else drop_last,
                        collate_fn=None if train else collate_decodable)


def calibration_loader(cfg: Any, batches: int, batch_size: int, workers: int | None = None,
                       seed: int = 0, device: torch.device | str = "cpu") -> DeviceLoader:
    """`batches` batches of random training images without augmentation (the same on every rank):
    data for measuring a model's activation statistics. Random, because class-folder datasets
    (ImageNet) are stored class by class."""
    dataset = build_dataset(cfg, "train", build_transform(cfg, train=False, normalize=False))
    sampler = RandomSampler(dataset, num_samples=min(batches * batch_size, len(dataset)),
                            generator=torch.Generator().manual_seed(seed))
    return DeviceLoader(dataset, sampler, batch_size, worker_count(workers), cfg.mean, cfg.std, device)
