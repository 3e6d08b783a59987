"""`shapes100`: a harder embedded dataset, 100 classes of textured, coloured shapes in clutter.

A development proxy on which models differ and pruning costs accuracy (the ten-class `synthetic`
set is solved by every model), never a reproduction of any published number. Class
`10 * shape + 2 * texture + family`:

* shape: one of the ten `synthetic` shapes (data/synthetic.py), radius 7-12 pixels at 32x32;
* texture of its fill: solid, horizontal stripes, vertical stripes, grid lines or dots, anchored at
  the shape's centre with a 3.5-pixel period;
* colour family of the shape: warm (red to yellow) or cool (blue to cyan), of random brightness.

Every shape and texture is symmetric under a horizontal flip, except the checker, whose flip is
its complement: each shape is drawn mirrored half of the time, so the flip maps every class's
images onto the same class's, and no class is defined by position: pad-crop and flip augmentation
keep labels valid. The clutter carries no label: a grey
background (dark or light) with a faint sinusoidal grating at a random angle, two small distractor
shapes of random shape, texture and colour under the main one, and pixel noise.

Image i is a pure function of (seed, split, i): it is rendered in a block of `BLOCK` images drawn
from a generator seeded by (seed, split, block), so the same index gives the same bytes whatever the
number of samples requested, on every machine; labels are `i % num_classes` (balanced), and the
training sampler shuffles. 10k 32x32 images take 1.3 s on one core (measured at load average 5).

Difficulty (benchmarks/results/shapes100_difficulty.md, a shared 2-core CPU): resnet20 with
`experiment=shapes100_resnet20` (5 epochs: 22 min at load average 5-7.6, about 10 estimated idle)
reached 70.90% top-1; pruning by BN scale without fine-tuning (prune.py prune.finetune_epochs=0)
left, at ratio 0.5, 1.00% (RM plain form) and 1.45% (residual form), chance being 1%, and at ratio
0.2, 0.95% and 11.95%.
"""
from __future__ import annotations

import math

import torch

from .synthetic import SHAPES, SPLIT_OFFSET, SyntheticDataset, shape_coords, shape_masks

TEXTURES = ("solid", "hstripes", "vstripes", "grid", "dots")
FAMILIES = ("warm", "cool")
NUM_CLASSES = len(SHAPES) * len(TEXTURES) * len(FAMILIES)
BLOCK = 256               # images per seeded block: indices render the same whatever the request size
_PERIOD = 3.5             # texture period in pixels: resolvable at 32x32, finer than the shapes' bars
_DISTRACTORS = 2


def texture_masks(texture_ids: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) float masks of TEXTURES[texture_ids[i]] on pixel offsets (y, x) from the shape's
    centre; cosines of the offsets make every texture symmetric under x -> -x."""
    k = 2 * math.pi / _PERIOD
    cy, cx = torch.cos(k * y), torch.cos(k * x)
    shape = torch.broadcast_shapes(y.shape, x.shape)
    options = (torch.ones(shape, dtype=torch.bool), (cy > 0).expand(shape), (cx > 0).expand(shape),
               (cy > 0.4) | (cx > 0.4), (cy > -0.3) & (cx > -0.3))
    masks = torch.zeros(shape)
    for t, option in enumerate(options):
        sel = texture_ids == t
        masks[sel] = option[sel].float()
    return masks


def class_masks(shape_ids, texture_ids, cy, cx, r, size: int, mirror=None) -> torch.Tensor:
    """(N, size, size) float masks of textured shapes centred at (cy, cx) with radii r, mirrored
    left-right where `mirror`: the flip of a 4x4 checker is its complement, which must be drawn too."""
    y, x = shape_coords(cy, cx, r, size)
    if mirror is not None:
        x = torch.where(mirror.view(-1, 1, 1), -x, x)
    radius = r.view(-1, 1, 1)
    return shape_masks(shape_ids, y, x) * texture_masks(texture_ids, y * radius, x * radius)


def _colours(family: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(N, 3) colours: warm (1, u, low) or cool (low, u, 1), scaled by a random brightness."""
    n = len(family)
    u, low = 0.8 * torch.rand(n, generator=g), 0.15 * torch.rand(n, generator=g)
    hot = torch.stack([torch.ones(n), u, low], dim=1)
    rgb = torch.where(family.view(-1, 1) == 0, hot, hot.flip(1))
    return rgb * (0.55 + 0.45 * torch.rand(n, 1, generator=g))


def _background(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size): a dark or light grey with a faint grating at a random angle and frequency."""
    light = torch.rand(n, 1, generator=g) < 0.5
    level = torch.where(light, 0.7, 0.05) + 0.25 * torch.rand(n, 1, generator=g)
    grey = level + 0.05 * (torch.rand(n, 3, generator=g) - 0.5)
    angle, phase = math.pi * torch.rand(n, generator=g), 2 * math.pi * torch.rand(n, generator=g)
    freq = 2 * math.pi * (1 / 8 + (1 / 3 - 1 / 8) * torch.rand(n, generator=g))
    coords = torch.arange(size, dtype=torch.float32)
    proj = (coords.view(1, 1, -1) * torch.cos(angle).view(-1, 1, 1)
            + coords.view(1, -1, 1) * torch.sin(angle).view(-1, 1, 1))
    grating = 0.08 * torch.cos(freq.view(-1, 1, 1) * proj + phase.view(-1, 1, 1))
    return grey.view(n, 3, 1, 1) + grating.unsqueeze(1)


def _paint(img: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(1)
    return mask * colour.view(-1, 3, 1, 1) + (1 - mask) * img


def _block(block: int, num_classes: int, size: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images BLOCK * block .. BLOCK * (block + 1) - 1 as float (BLOCK, 3, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed((seed * 2_000_003 + SPLIT_OFFSET[split]) * 100_003 + block)
    labels = (torch.arange(BLOCK) + BLOCK * block) % num_classes
    img = _background(BLOCK, size, g)
    for _ in range(_DISTRACTORS):   # anywhere, smaller than any main shape, under it
        r = size * (0.08 + 0.07 * torch.rand(BLOCK, generator=g))
        cy, cx = size * torch.rand(BLOCK, generator=g), size * torch.rand(BLOCK, generator=g)
        shapes = torch.randint(len(SHAPES), (BLOCK,), generator=g)
        textures = torch.randint(len(TEXTURES), (BLOCK,), generator=g)
        mirror = torch.rand(BLOCK, generator=g) < 0.5
        img = _paint(img, class_masks(shapes, textures, cy, cx, r, size, mirror), torch.rand(BLOCK, 3, generator=g))
    r = size * (0.22 + 0.16 * torch.rand(BLOCK, generator=g))
    cy = r + (size - 2 * r) * torch.rand(BLOCK, generator=g)
    cx = r + (size - 2 * r) * torch.rand(BLOCK, generator=g)
    style = labels % (len(TEXTURES) * len(FAMILIES))
    mirror = torch.rand(BLOCK, generator=g) < 0.5
    mask = class_masks(labels // len(TEXTURES) // len(FAMILIES), style // len(FAMILIES), cy, cx, r, size, mirror)
    img = _paint(img, mask, _colours(style % len(FAMILIES), g))
    return img + 0.06 * torch.randn(img.shape, generator=g), labels


def generate(num_samples: int, num_classes: int = NUM_CLASSES, size: int = 32, seed: int = 0,
             split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, size, size), labels int64 (N,)): images 0 .. N - 1 of (seed, split).
    `num_classes` below 100 keeps the first classes (the same shapes in fewer styles or shapes)."""
    if split not in SPLIT_OFFSET:
        raise ValueError(f"shapes100 split must be one of {sorted(SPLIT_OFFSET)}, got {split!r}")
    if not 2 <= num_classes <= NUM_CLASSES:
        raise ValueError(f"shapes100 has 2 to {NUM_CLASSES} classes, got data.num_classes={num_classes}")
    blocks = [_block(b, num_classes, size, seed, split) for b in range(math.ceil(num_samples / BLOCK))]
    img = torch.cat([b[0] for b in blocks])[:num_samples] if blocks else torch.zeros(0, 3, size, size)
    labels = torch.cat([b[1] for b in blocks])[:num_samples] if blocks else torch.zeros(0, dtype=torch.int64)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


class Shapes100Dataset(SyntheticDataset):
    """In-memory shapes100 images; `transform` gets a uint8 (3, H, W) tensor."""

    generate = staticmethod(generate)
