"""Datasets (ImageNet folders, CIFAR pickles, the embedded synthetic and shapes100 sets), transforms and loaders.

    ds = build_dataset(cfg.data, "val", build_transform(cfg.data, train=False))
    loader = build_loader(cfg.data, "val", batch_size=256, device="cuda")   # sharded over ranks, no padding
    # batches: float32 images normalised on the device (workers hand over uint8), int64 targets
"""
from .datasets import DATASETS, SPLITS, DatasetError, build_dataset
from .loader import DeviceLoader, build_loader, calibration_loader, worker_count
from .samplers import EvalSampler, TrainSampler
from .shapes100 import Shapes100Dataset
from .synthetic import SyntheticDataset
from .transforms import build_transform

__all__ = ["build_dataset", "build_loader", "DeviceLoader", "calibration_loader", "build_transform", "worker_count",
           "DatasetError", "DATASETS", "SPLITS", "EvalSampler", "TrainSampler", "SyntheticDataset", "Shapes100Dataset"]
