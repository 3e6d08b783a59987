"""`synthetic`: a procedurally generated, learnable image dataset for offline runs and tests.

Each class is a shape (disk, ring, square, frame, triangle, plus, cross, horizontal bars, vertical
bars, checkerboard) drawn at a random position and size, in random foreground/background colours,
with pixel noise. Every shape is symmetric under a horizontal flip but the checker, whose flip is its
complement (still no other class), so the usual flip augmentation keeps labels valid. `shape_coords`
and `shape_masks` are shared with the harder `shapes100` set (data/shapes100.py). The images are a pure function of (seed, split, index count): the same config
gives the same bytes on every machine and rank, and 10k CIFAR-sized images take well under a second.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

SHAPES = ("disk", "ring", "square", "frame", "triangle", "plus", "cross", "hbars", "vbars", "checker")
SPLIT_OFFSET = {"train": 0, "val": 1_000_003}


def shape_mask(shape: int, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Boolean mask of SHAPES[shape] on coordinates (y, x) given in units of the shape's radius."""
    ay, ax = y.abs(), x.abs()
    box = (ay <= 1) & (ax <= 1)
    name = SHAPES[shape]
    if name in ("disk", "ring"):
        rad = torch.sqrt(x * x + y * y)
        return (rad <= 1) & (rad >= (0.55 if name == "ring" else 0))
    if name == "square":
        return box
    if name == "frame":
        return box & ((ay >= 0.6) | (ax >= 0.6))
    if name == "triangle":  # apex up
        return (y <= 0.8) & (y >= -1) & (ax <= (y + 1.0) * 0.5)
    if name == "plus":
        return box & ((ay <= 0.3) | (ax <= 0.3))
    if name == "cross":
        return box & ((ay - ax).abs() <= 0.35)
    if name == "hbars":
        return box & (torch.floor((y + 1) * 2.5) % 2 == 0)
    if name == "vbars":
        return box & (torch.floor((x + 1) * 2.5) % 2 == 0)
    return box & ((torch.floor((y + 1) * 2) + torch.floor((x + 1) * 2)) % 2 == 0)  # checker


def shape_coords(cy, cx, r, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates of a size x size image relative to centres (cy, cx), in units of radii
    r: y is (N, size, 1), x is (N, 1, size); they broadcast to (N, size, size)."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y = (coords.view(1, -1, 1) - cy.view(-1, 1, 1)) / r.view(-1, 1, 1)
    x = (coords.view(1, 1, -1) - cx.view(-1, 1, 1)) / r.view(-1, 1, 1)
    return y, x


def shape_masks(shape_ids: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) float masks: SHAPES[shape_ids[i]] on the coordinates (y[i], x[i]) of `shape_coords`."""
    masks = torch.zeros(len(shape_ids), y.shape[1], x.shape[2])
    for shape in range(len(SHAPES)):
        sel = shape_ids == shape
        masks[sel] = shape_mask(shape, y[sel], x[sel]).float()
    return masks


def generate(num_samples: int, num_classes: int = 10, size: int = 32, seed: int = 0,
             split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, size, size), labels int64 (N,)); balanced classes in a seeded order.

    Classes beyond the ten shapes reuse a shape with a colour-temperature cue (class // 10 picks a
    hue band), so any `num_classes` stays learnable.
    """
    if split not in SPLIT_OFFSET:
        raise ValueError(f"synthetic split must be one of {sorted(SPLIT_OFFSET)}, got {split!r}")
    g = torch.Generator().manual_seed(seed * 2_000_003 + SPLIT_OFFSET[split])
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=g)]
    r = size * (0.22 + 0.18 * torch.rand(num_samples, generator=g))
    cy = r + (size - 2 * r) * torch.rand(num_samples, generator=g)
    cx = r + (size - 2 * r) * torch.rand(num_samples, generator=g)
    mask = shape_masks(labels % len(SHAPES), *shape_coords(cy, cx, r, size)).unsqueeze(1)
    band = (labels // len(SHAPES)).float()
    bands = max(math.ceil(num_classes / len(SHAPES)), 1)
    # Foreground and background colours differ by at least ~0.35 in brightness so shapes stay visible.
    fg = torch.rand(num_samples, 3, generator=g) * 0.5 + 0.5
    if bands > 1:
        hue = torch.stack([band / bands, 1 - band / bands, (band % 2) * 0.5], dim=1)
        fg = 0.5 * fg + 0.5 * hue
    bg = torch.rand(num_samples, 3, generator=g) * 0.35
    swap = torch.rand(num_samples, 1, generator=g) < 0.5   # dark-on-light as often as light-on-dark
    fg, bg = torch.where(swap, bg, fg), torch.where(swap, fg, bg)
    img = mask * fg.view(-1, 3, 1, 1) + (1 - mask) * bg.view(-1, 3, 1, 1)
    img = img + 0.08 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


class SyntheticDataset(Dataset):
    """In-memory synthetic images; `transform` gets a uint8 (3, H, W) tensor. A subclass swaps in
    another `generate(num_samples, num_classes, size, seed, split)`."""

    generate = staticmethod(generate)

    def __init__(self, num_samples: int, num_classes: int = 10, size: int = 32, seed: int = 0,
                 split: str = "train", transform=None):
        self.images, self.targets = self.generate(num_samples, num_classes, size, seed, split)
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])
