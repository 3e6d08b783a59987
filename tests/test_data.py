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
