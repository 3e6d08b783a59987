"""Training and evaluation transforms from a data config's `augment` settings.

One torchvision v2 pipeline serves PIL images (CIFAR, ImageNet files PIL decodes) and uint8 tensors
(synthetic, ImageNet JPEGs). Loaders stop at uint8 (`normalize=False`): `data.loader.DeviceLoader`
scales and normalises the batches where they are used, with the same operations as `ToDtype` and
`Normalize` here.
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

CROPS = ("resized", "pad", "none")


def build_transform(cfg: Any, train: bool, normalize: bool = True) -> v2.Compose:
    """Augmentation (`train`) or the evaluation resize and crop; then float32 normalised with the
    config's mean and std, or (not `normalize`) the uint8 image."""
    aug, size = cfg.augment, cfg.input_size
    steps: list = [v2.ToImage()]
    if train:
        if aug.crop == "resized":    # ImageNet: RandomResizedCrop 224
            steps.append(v2.RandomResizedCrop(size, antialias=True))
        elif aug.crop == "pad":      # CIFAR: 4-pixel padding and a random 32x32 crop
            steps.append(v2.RandomCrop(size, padding=aug.pad))
        elif aug.crop != "none":
            raise ValueError(f"data.augment.crop must be one of {CROPS}, got {aug.crop!r}")
        if aug.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(aug.hflip))
        if aug.get("randaugment"):
            steps.append(_randaugment(aug.randaugment, cfg.mean))
    elif aug.crop == "resized":      # resize 256, centre crop 224 for crop_pct 0.875
        steps += [v2.Resize(int(round(size / aug.crop_pct)), antialias=True), v2.CenterCrop(size)]
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
    return v2.Compose(steps)


def _randaugment(spec: str, mean) -> Any:
    """timm's RandAugment from a spec like "rand-m9-mstd0.5" (it works on PIL images)."""
    from timm.data.auto_augment import rand_augment_transform

    fill = tuple(int(round(255 * m)) for m in mean)
    return v2.Compose([v2.ToPILImage(), rand_augment_transform(spec, {"img_mean": fill}), v2.ToImage()])
