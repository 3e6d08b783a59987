"""Dataset builders from a data config (`conf/data/*.yaml`).

A missing or malformed dataset raises `DatasetError` naming the path tried and the layout expected,
before any training starts.
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Callable

from torch.utils.data import Dataset

from .shapes100 import Shapes100Dataset
from .synthetic import SyntheticDataset

SPLITS = ("train", "val")
DATASETS = ("synthetic", "shapes100", "cifar10", "cifar100", "imagenet")
_EMBEDDED = {"synthetic": SyntheticDataset, "shapes100": Shapes100Dataset}   # generated in memory
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
log = logging.getLogger("rmnet.data")
_warned: set[str] = set()   # undecodable files already named by this process
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_FILES = {"cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]},
                "cifar100": {"train": ["train"], "val": ["test"]}}


class DatasetError(FileNotFoundError):
    """The dataset is missing or not laid out as expected; the message says where and how."""


def build_dataset(cfg: Any, split: str, transform: Callable | None = None, substitute_bad: bool = True) -> Dataset:
    """Dataset `split` ("train" or "val") of the data config `cfg` (`cfg.name` picks the kind).

    With `data.bad_images=skip`, an undecodable image is replaced by the next decodable one when
    `substitute_bad` (training: the sampler's length stays valid) and is returned as None otherwise
    (evaluation: `data.loader.collate_decodable` leaves it out, so no image is counted twice)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name = cfg.name
    if name in _EMBEDDED:
        size = cfg.train_size if split == "train" else cfg.val_size
        return _EMBEDDED[name](size, cfg.num_classes, cfg.input_size, cfg.seed, split, transform)
    if name in _CIFAR_FOLDERS:
        return _cifar(name, os.path.expanduser(cfg.root), split, transform, bool(cfg.get("download", False)))
    if name == "imagenet":
        return _image_folder(os.path.expanduser(cfg.root), split, transform, cfg.num_classes,
                             cfg.get("bad_images", "fail"), substitute_bad)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def _cifar_class(name: str):
    """torchvision's CIFAR class, checking that the files exist rather than their md5 sums: the
    sums only match the official archive, and unreadable files fail loudly while unpickling anyway."""
    import torchvision.datasets as tvd

    base = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100

    class Cifar(base):
        def _check_integrity(self) -> bool:
            files = [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in files)

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Cifar.__name__ = base.__name__
    return Cifar


def _cifar(name: str, root: str, split: str, transform, download: bool) -> Dataset:
    folder = os.path.join(root, _CIFAR_FOLDERS[name])
    expected = ", ".join(_CIFAR_FILES[name][split] + ["meta" if name == "cifar100" else "batches.meta"])
    layout = (f"expected torchvision's python-pickle layout {folder}/{{{expected}}} (the "
              f"'python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html extracted in "
              f"{root}), or pass data.download=true to fetch it")
    if not download and not os.path.isdir(folder):
        raise DatasetError(f"{name} not found: {folder} does not exist; {layout}")
    try:
        return _cifar_class(name)(root, train=split == "train", transform=transform, download=download)
    except (RuntimeError, OSError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise DatasetError(f"{name} at {folder} is incomplete or unreadable ({e}); {layout}") from None


BAD_IMAGES = ("fail", "skip")
_JPEG_START = (0xFF, 0xD8, 0xFF)


def decode_image(path: str) -> Any:
    """The image at `path`: a uint8 (3, H, W) tensor for a three-channel JPEG (torchvision's decoder:
    libjpeg-turbo like PIL's, the same pixels, without a PIL image to convert; its channels-last
    strides also take torch's fast uint8 resize), else what torchvision's default loader gives (a PIL
    RGB image): other formats, grayscale and CMYK JPEGs (PIL's colour conversion stays the reference),
    and files torchvision cannot decode, so that a corrupt file fails with PIL's error as before."""
    from torchvision.datasets.folder import default_loader
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    blob = read_file(path)
    if tuple(blob[:3].tolist()) == _JPEG_START:
        try:
            image = decode_jpeg(blob, mode=ImageReadMode.UNCHANGED)
        except RuntimeError:
            image = None
        if image is not None and image.shape[0] == 3:
            return image
    return default_loader(path)


def _checked_image_folder(bad_images: str, substitute: bool):
    """torchvision's ImageFolder where an image that cannot be decoded is named: an error
    (`fail`), or (`skip`) a warning (once per file and process) and, with `substitute`, the next
    decodable sample in its place, so that the sampler's fixed length and shards stay valid, else
    None; `skipped` counts them in this process."""
    import torchvision.datasets as tvd

    class CheckedImageFolder(tvd.ImageFolder):
        skipped = 0

        def __getitem__(self, index: int):
            for offset in range(len(self.samples)):
                path = self.samples[(index + offset) % len(self.samples)][0]
                try:
                    return super().__getitem__((index + offset) % len(self.samples))
                except (OSError, ValueError, SyntaxError) as e:   # PIL's decode errors
                    if bad_images == "fail":
                        raise DatasetError(f"{path} cannot be decoded ({type(e).__name__}: {e}); delete or "
                                           f"replace it, or pass data.bad_images=skip to skip such files") from None
                    self.skipped += 1
                    if path not in _warned:   # once per file, not on every evaluation pass
                        _warned.add(path)
                        log.warning(f"skipped undecodable image {path} ({e}); {self.skipped} skipped so far "
                                    f"in this process")
                    if not substitute:
                        return None
            raise DatasetError(f"no image under {self.root} can be decoded")

    return CheckedImageFolder


def _image_folder(root: str, split: str, transform, num_classes: int, bad_images: str = "fail",
                  substitute_bad: bool = True) -> Dataset:
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"data.bad_images must be one of {BAD_IMAGES}, got {bad_images!r}")
    folder = os.path.join(root, split)
    layout = (f"expected ImageNet folders {root}/{{train,val}}/<class>/<image>.JPEG with the same "
              f"{num_classes} class folders in both splits (the validation images sorted into class "
              f"folders, e.g. with the valprep.sh script)")
    if not os.path.isdir(folder):
        raise DatasetError(f"imagenet split {split!r} not found: {folder} does not exist; {layout}")
    try:
        ds = _checked_image_folder(bad_images, substitute_bad)(folder, transform=transform, loader=decode_image,
                                                               allow_empty=False)
    except (FileNotFoundError, RuntimeError) as e:
        raise DatasetError(f"imagenet at {folder} is malformed ({e}); {layout}") from None
    if len(ds.classes) != num_classes:
        raise DatasetError(f"{folder} has {len(ds.classes)} class folders but data.num_classes is {num_classes}: "
                           f"pass data.num_classes={len(ds.classes)} if that is your dataset; {layout}")
    return ds
