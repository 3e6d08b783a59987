"""Data: synthetic determinism, CIFAR-pickle and ImageNet-folder loaders on generated files, samplers."""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data.synthetic import generate
from engine.config import check_overrides


def test_synthetic_is_deterministic_balanced_and_split_dependent():
    a, la = generate(200, 10, 32, seed=3)
    b, lb = generate(200, 10, 32, seed=3)
    v, lv = generate(200, 10, 32, seed=3, split="val")
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, v)
    assert a.dtype == torch.uint8 and a.shape == (200, 3, 32, 32)
    assert torch.bincount(la).tolist() == [20] * 10


def test_synthetic_loader_normalises_and_augments():
    cfg = check_overrides(["data=synthetic", "data.train_size=64", "data.val_size=10"]).data
    loader = data.build_loader(cfg, "train", batch_size=16, workers=0)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,) and len(loader) == 4
    # Validation images are the generated pixels, normalised with the config's mean and std.
    val = data.build_loader(cfg, "val", batch_size=10, workers=0)
    x, y = next(iter(val))
    images, labels = val.dataset.images, val.dataset.targets
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - mean) / std)
    assert torch.equal(y, labels)


def _write_cifar(root, name: str, n: int):
    folder = os.path.join(root, {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name])
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    key = "labels" if name == "cifar10" else "fine_labels"
    classes = 10 if name == "cifar10" else 100
    files = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]) if name == "cifar10" else ["train", "test"]
    for f in files:
        blob = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(rng.integers(0, classes, n))}
        with open(os.path.join(folder, f), "wb") as fh:
            pickle.dump(blob, fh)
    meta = ("batches.meta", "label_names") if name == "cifar10" else ("meta", "fine_label_names")
    with open(os.path.join(folder, meta[0]), "wb") as fh:
        pickle.dump({meta[1]: [f"c{i}" for i in range(classes)]}, fh)
    return folder


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles_load(tmp_path, name):
    folder = _write_cifar(tmp_path, name, 6)
    cfg = check_overrides([f"data={name}", f"data.root={tmp_path}"]).data
    train = data.build_dataset(cfg, "train", data.build_transform(cfg, train=True))
    val = data.build_dataset(cfg, "val", data.build_transform(cfg, train=False))
    assert len(train) == (30 if name == "cifar10" else 6) and len(val) == 6
    x, y = val[0]
    # The raw pixels and the label survive: un-normalising the eval transform gives the pickled bytes back.
    with open(os.path.join(folder, "test_batch" if name == "cifar10" else "test"), "rb") as fh:
        blob = pickle.load(fh)
    raw = torch.tensor(blob["data"][0].reshape(3, 32, 32), dtype=torch.float32)
    assert y == blob["labels" if name == "cifar10" else "fine_labels"][0]
    back = (x * torch.tensor(cfg.std).view(3, 1, 1) + torch.tensor(cfg.mean).view(3, 1, 1)) * 255
    assert torch.allclose(back, raw, atol=1e-3)


def test_cifar_missing_or_corrupt_names_path_and_layout(tmp_path):
    cfg = check_overrides(["data=cifar10", f"data.root={tmp_path}"]).data
    with pytest.raises(data.DatasetError) as e:
        data.build_dataset(cfg, "train")
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value) and "data_batch_1" in str(e.value)
    folder = _write_cifar(tmp_path, "cifar10", 2)
    with open(os.path.join(folder, "data_batch_3"), "wb") as fh:
        fh.write(b"not a pickle")
    with pytest.raises(data.DatasetError, match="incomplete or unreadable"):
        data.build_dataset(cfg, "train")


def _write_imagenet(root, classes=("n01", "n02"), per_class=3):
    for split in ("train", "val"):
        for c, cls in enumerate(classes):
            os.makedirs(root / split / cls)
            for i in range(per_class):
                Image.new("RGB", (40 + i, 30), (60 * c, 100, 20 * i)).save(root / split / cls / f"{i}.JPEG")


def test_imagenet_folders_load(tmp_path):
    _write_imagenet(tmp_path)
    cfg = check_overrides(["data=imagenet", f"data.root={tmp_path}", "data.num_classes=2",
                           "data.input_size=24"]).data
    loader = data.build_loader(cfg, "val", batch_size=4, workers=0)
    xs, ys = zip(*loader)
    assert torch.cat(ys).tolist() == [0, 0, 0, 1, 1, 1]
    assert xs[0].shape == (4, 3, 24, 24)
    x, _ = data.build_dataset(cfg, "train", data.build_transform(cfg, train=True))[0]
    assert x.shape == (3, 24, 24)


def test_imagenet_errors_name_path_and_layout(tmp_path):
    cfg = check_overrides(["data=imagenet", f"data.root={tmp_path}"]).data
    with pytest.raises(data.DatasetError) as e:
        data.build_dataset(cfg, "val")
    assert str(tmp_path / "val") in str(e.value) and "<class>" in str(e.value)
    _write_imagenet(tmp_path)
    with pytest.raises(data.DatasetError, match="2 class folders but data.num_classes is 1000"):
        data.build_dataset(cfg, "val")


def test_eval_sampler_covers_every_index_once():
    shares = [list(data.EvalSampler(10, 3, r)) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(10))
    assert [len(s) for s in shares] == [4, 3, 3]


def test_train_sampler_resumes_mid_epoch():
    full = data.TrainSampler(10, 2, 1, seed=5)
    full.set_epoch(3)
    order = list(full)
    assert len(order) == 5
    later = data.TrainSampler(10, 2, 1, seed=5)
    later.set_epoch(3, start=2)
    assert list(later) == order[2:] and len(later) == 3
    other = data.TrainSampler(10, 2, 0, seed=5)
    other.set_epoch(3)
    assert sorted(order + list(other)) == list(range(10))


# --- the input pipeline: uint8 out of the workers, normalised where the batches are used ------------
def _old_style_batches(cfg, split, batch_size, loader=None):
    """The batches of the previous pipeline: the transform normalises to float32 in the dataset, PIL decodes."""
    dataset = data.build_dataset(cfg, split, data.build_transform(cfg, train=split == "train"))
    if loader is not None:
        dataset.loader = loader
    return list(torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False))


def test_uint8_leaves_the_workers_and_batches_equal_the_old_normalisation(tmp_path):
    """Workers hand over uint8 images (a quarter of the bytes); the loader's batches are the old
    pipeline's float32 normalised images (same augmentation stream for the same seed)."""
    cfg = check_overrides(["data=synthetic", "data.train_size=32", "data.val_size=8"]).data
    loader = data.build_loader(cfg, "train", batch_size=8, workers=0, device="cpu")
    image, _ = loader.dataset[0]
    assert image.dtype == torch.uint8
    raw, _ = next(iter(loader.loader))
    assert raw.dtype == torch.uint8
    torch.manual_seed(3)
    new = list(loader)
    torch.manual_seed(3)
    dataset = data.build_dataset(cfg, "train", data.build_transform(cfg, train=True))
    old = list(torch.utils.data.DataLoader(dataset, batch_size=8, sampler=loader.sampler, generator=torch.Generator()))
    assert len(new) == len(old) == 4
    for (x, y), (x_old, y_old) in zip(new, old):
        assert x.dtype == torch.float32
        torch.testing.assert_close(x, x_old)
        assert torch.equal(y, y_old)
    # On another device (meta: a stand-in for CUDA) the uint8 batch is moved first, then normalised there.
    x, y = next(iter(data.build_loader(cfg, "val", batch_size=8, workers=0, device="meta")))
    assert (x.device.type, x.dtype, x.shape, y.device.type) == ("meta", torch.float32, (8, 3, 32, 32), "meta")
    _write_cifar(tmp_path, "cifar10", 6)
    cfg = check_overrides(["data=cifar10", f"data.root={tmp_path}"]).data
    (x, y), = data.build_loader(cfg, "val", batch_size=6, workers=0)
    (x_old, y_old), = _old_style_batches(cfg, "val", 6)
    torch.testing.assert_close(x, x_old)
    assert torch.equal(y, y_old)


def test_imagenet_batches_equal_the_old_pil_pipeline(tmp_path):
    from torchvision.datasets.folder import default_loader

    _write_imagenet(tmp_path, per_class=2)
    cfg = check_overrides(["data=imagenet", f"data.root={tmp_path}", "data.num_classes=2",
                           "data.input_size=24"]).data
    new = list(data.build_loader(cfg, "val", batch_size=4, workers=0))
    old = _old_style_batches(cfg, "val", 4, loader=default_loader)
    for (x, y), (x_old, y_old) in zip(new, old, strict=True):
        # Both decoders are libjpeg-turbo (bit-identical here); one step of 255 leaves room for another build.
        torch.testing.assert_close(x, x_old, atol=1.01 / 255 / min(cfg.std), rtol=0)
        assert torch.equal(y, y_old)


def _jpeg(path, image, **kw):
    image.save(path, "JPEG", **kw)
    return str(path)


def test_decode_uses_torchvision_for_rgb_jpegs_and_pil_for_the_rest(tmp_path):
    from torchvision.transforms.v2.functional import pil_to_tensor

    from data.datasets import decode_image

    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    fast = decode_image(_jpeg(tmp_path / "rgb.JPEG", rgb, subsampling=2))
    assert isinstance(fast, torch.Tensor) and fast.dtype == torch.uint8 and fast.shape == (3, 30, 40)
    reference = pil_to_tensor(Image.open(tmp_path / "rgb.JPEG").convert("RGB"))
    assert (fast.int() - reference.int()).abs().max() <= 1
    rgb.save(tmp_path / "png.JPEG", "PNG")   # ImageNet holds a PNG named .JPEG
    others = [_jpeg(tmp_path / "gray.JPEG", rgb.convert("L")), _jpeg(tmp_path / "cmyk.JPEG", rgb.convert("CMYK")),
              str(tmp_path / "png.JPEG")]
    for path in others:
        image = decode_image(path)
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (40, 30), path
    whole = (tmp_path / "rgb.JPEG").read_bytes()
    (tmp_path / "cut.JPEG").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(OSError, match="truncated"):   # PIL's error, which data.bad_images handles
        decode_image(str(tmp_path / "cut.JPEG"))


def test_worker_count_follows_the_cores_per_local_rank(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert data.worker_count(None) == 23        # 24 cores per rank: one for the training process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "96")
    assert data.worker_count(None) == 0
    assert data.worker_count(3) == 3


def test_persistent_workers_reseed_each_pass_like_fresh_ones():
    """Workers live across epochs, yet reseeding the loader's generator reproduces a pass's augmentation
    as fresh workers would (the trainer's per-epoch reseed); another seed gives other crops."""
    cfg = check_overrides(["data=synthetic", "data.train_size=16", "data.val_size=8"]).data
    loader = data.build_loader(cfg, "train", batch_size=8, workers=1)
    assert loader.loader.persistent_workers
    passes = {}
    for seed in (5, 6, 5):
        loader.generator.manual_seed(seed)
        passes.setdefault(seed, []).append(torch.cat([x for x, _ in loader]))
    torch.testing.assert_close(passes[5][0], passes[5][1], rtol=0, atol=0)
    assert not torch.equal(passes[5][0], passes[6][0])
    fresh = torch.utils.data.DataLoader(data.build_dataset(cfg, "train", data.build_transform(cfg, train=True)),
                                        batch_size=8, sampler=loader.sampler, num_workers=1,
                                        generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(passes[5][0], torch.cat([x for x, _ in fresh]))


def test_a_skipped_file_is_warned_about_once_per_process(tmp_path, caplog):
    import logging

    _write_imagenet(tmp_path, per_class=1)
    bad = tmp_path / "val" / "n02" / "bad.JPEG"
    bad.write_bytes(b"not an image")
    cfg = check_overrides(["data=imagenet", f"data.root={tmp_path}", "data.num_classes=2", "data.input_size=16",
                           "data.bad_images=skip"]).data
    loader = data.build_loader(cfg, "val", batch_size=4, workers=0)
    with caplog.at_level(logging.WARNING, logger="rmnet.data"):
        for _ in range(3):   # three evaluation passes
            assert sum(len(y) for _, y in loader) == 2
    assert len([r for r in caplog.records if str(bad) in r.getMessage()]) == 1


def test_loader_benchmark_runs(capsys):
    from data import bench_loader

    bench_loader.main(["--files", "4", "--samples", "32", "--batch-size", "8", "--rounds", "1"])
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row[0] for row in rows[1:4]] == ["before", "pil-u8", "now"]
    assert all(float(row[3]) > 0 for row in rows[1:4])   # the wall-clock rate
    assert [row[0] for row in rows[5:]] == ["decode_jpeg", "crop, resize and flip (v2)",
                                            "whole sample (read, decode, transform)"]
