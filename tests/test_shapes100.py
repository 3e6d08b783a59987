"""The embedded shapes100 proxy: a pure function of (seed, split, index), balanced, labels valid
under flip augmentation, fast to generate, composable as `data=shapes100`, loadable."""
import time

import pytest
import torch

import data
from data.shapes100 import BLOCK, NUM_CLASSES, TEXTURES, class_masks, generate
from data.synthetic import SHAPES
from engine.config import check_overrides


def test_images_are_a_function_of_seed_split_and_index():
    a, la = generate(BLOCK + 44, seed=3)
    b, lb = generate(BLOCK + 44, seed=3)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.dtype == torch.uint8 and a.shape == (BLOCK + 44, 3, 32, 32)
    # Not a function of how many are requested: a prefix is the same bytes (synthetic's images are not).
    short, ls = generate(100, seed=3)
    assert torch.equal(short, a[:100]) and torch.equal(ls, la[:100])
    assert not torch.equal(generate(100, seed=3, split="val")[0], short)
    assert not torch.equal(generate(100, seed=4)[0], short)


@pytest.mark.parametrize("num_classes", [NUM_CLASSES, 37])
def test_classes_are_balanced(num_classes):
    _, labels = generate(num_classes * 7, num_classes)
    assert torch.bincount(labels, minlength=num_classes).tolist() == [7] * num_classes


def test_bad_class_count_or_split_is_refused():
    with pytest.raises(ValueError, match="2 to 100 classes"):
        generate(10, num_classes=101)
    with pytest.raises(ValueError, match="split must be one of"):
        generate(10, split="test")


@pytest.mark.parametrize("radius", [7.04, 9.0, 12.16])   # the smallest, a middle and the largest main shape
def test_no_two_classes_are_mirror_images(radius):
    """A flipped class pattern is one the generator draws for that class (itself or its mirrored
    drawing) and is no other class's pattern, drawn either way; colour families are flip-invariant."""
    n = len(SHAPES) * len(TEXTURES)
    shapes, textures = torch.arange(n) // len(TEXTURES), torch.arange(n) % len(TEXTURES)
    centre, r = torch.full((n,), 16.0), torch.full((n,), radius)
    plain = class_masks(shapes, textures, centre, centre, r, 32)
    mirrored = class_masks(shapes, textures, centre, centre, r, 32, torch.ones(n, dtype=torch.bool))
    flipped = plain.flip(-1)
    for c in range(n):
        assert torch.equal(flipped[c], plain[c]) or torch.equal(flipped[c], mirrored[c])
    drawn = torch.cat([plain, mirrored]).view(2 * n, -1)
    distance = (flipped.view(n, 1, -1) != drawn.view(1, 2 * n, -1)).sum(-1).view(n, 2, n)
    other = ~torch.eye(n, dtype=torch.bool).unsqueeze(1).expand(n, 2, n)
    assert distance[other].min() >= 12   # pixels apart from every other class, even at the smallest size


def test_generation_takes_seconds():
    start = time.perf_counter()
    generate(10_000)
    assert time.perf_counter() - start < 30   # 1.3 s on one core at load 5, 8 s at load 8 (shared machine)


def test_config_and_recipe_compose():
    cfg = check_overrides(["data=shapes100"])
    assert (cfg.data.name, cfg.data.num_classes, cfg.data.stem, cfg.data.input_size) == ("shapes100", 100, "cifar", 32)
    cfg = check_overrides(["experiment=shapes100_resnet20"])
    assert (cfg.model.name, cfg.data.name, cfg.epochs) == ("resnet20", "shapes100", 5)


def test_loader_gives_augmented_batches_and_the_generated_val_images():
    cfg = check_overrides(["data=shapes100", "data.train_size=64", "data.val_size=10"]).data
    x, y = next(iter(data.build_loader(cfg, "train", batch_size=16, workers=0)))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and 0 <= int(y.min()) <= int(y.max()) < 100
    val = data.build_loader(cfg, "val", batch_size=10, workers=0)
    x, y = next(iter(val))
    images, labels = generate(10, split="val")
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - mean) / std)
    assert torch.equal(y, labels)
