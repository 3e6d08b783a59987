"""The data config a trained model is used with: its trained input size and normalisation by default,
and classes and stem that fit.

Checkpoints and deploy artifacts record what their model was trained on (`ModelSpec.input`) and,
from the trainer, the whole data config. Evaluation, BN recalibration and pruning read data with
those settings unless the command line sets others, and then say so in one line.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from data import DATASETS, build_loader, calibration_loader
from models import INPUT_SIZE, InputSpec, ModelSpec

TRAINED_INPUT = ("input_size", "mean", "std")


def data_for(chosen: Any, stored: dict[str, Any] | None, trained: InputSpec | None, explicit: set[str],
             origin: str, nominal: int | None = None) -> tuple[DictConfig, list[str]]:
    """(data config, warnings). `chosen`: the data section of the command's config (a group such as
    `data=imagenet`, or only `data.key=value` edits); `stored`: the data config the file records;
    `trained`: its model's input; `explicit`: the keys set on the command line; `nominal`: the input
    size of the model's stem, used when `trained` is None.

    A chosen group is used as composed, otherwise the stored config with the edits on top; either way
    the trained input size, mean and std apply unless set explicitly, and an explicit value that
    differs from the trained one is kept but warned about. A file that does not record its trained
    input (a foreign state dict) is used at the data's size, with a warning where that is not the
    stem's nominal size and the command line did not choose it."""
    chosen = chosen if chosen is not None else OmegaConf.create({})
    if "name" in chosen:
        data = OmegaConf.create(OmegaConf.to_container(chosen))
    elif stored is None:
        raise ValueError(f"{origin} stores no data settings: pass data=<name> ({', '.join(DATASETS)}) and "
                         f"data.root=... if the files are not in the default place")
    else:
        data = OmegaConf.merge(OmegaConf.create(stored), chosen)
    warnings = []
    if trained is None and nominal is not None and data.input_size != nominal and "data.input_size" not in explicit:
        warnings.append(f"{origin} does not record the input size its model was trained at: used at the data's "
                        f"{data.input_size}x{data.input_size}, not its stem's nominal {nominal}x{nominal}; results "
                        f"can be far off unless it was trained at that size (data.input_size=N sets it)")
    if trained is not None:
        values = {"input_size": trained.size, "mean": trained.mean, "std": trained.std}
        for key in TRAINED_INPUT:
            want = values[key]
            if want is None:
                continue
            want = list(want) if isinstance(want, tuple) else want
            if f"data.{key}" not in explicit:
                data[key] = want
            elif OmegaConf.to_container(data)[key] != want:
                warnings.append(f"data.{key}={OmegaConf.to_container(data)[key]} differs from the model's training "
                                f"({want}): results at other settings than it was trained with can be far off")
    return data, warnings


def check_data(spec: ModelSpec, data: Any, origin: str) -> None:
    """The model's classes and stem must be the data's; ValueError naming both and what to pass."""
    if int(spec.num_classes) != int(data.num_classes):
        raise ValueError(f"{origin} classifies {spec.num_classes} classes but data {data.name!r} has "
                         f"{data.num_classes}: use the dataset the model was trained for (or data.num_classes=N)")
    if spec.stem and spec.stem != data.stem:
        size = INPUT_SIZE[spec.stem]
        raise ValueError(f"{origin} has the {spec.stem!r} stem ({size}x{size} input) but data {data.name!r} uses "
                         f"the {data.stem!r} stem: choose matching data (or data.stem={spec.stem})")


def trained_loaders(art: Any, batch_size: int, calibration_batches: int) -> tuple[Any, Any] | None:
    """(calibration, validation) loaders of the data `art` (an `artifacts.Artifact`) was trained on, at
    its trained input size and normalisation: `calibration_batches` batches of random training images
    without augmentation, and the whole validation split. None when the file stores no data config.
    For tools above `engine/` that measure a trained model (the benchmark's INT8 calibration and
    fidelity) without depending on `data/` themselves."""
    if art.data_config is None:
        return None
    data, _ = data_for(None, art.data_config, art.spec.input, set(), art.origin, art.spec.input_size)
    check_data(art.spec, data, art.origin)
    return (calibration_loader(data, calibration_batches, batch_size, workers=0),
            build_loader(data, "val", batch_size, train=False))
