"""The typed description of a model that checkpoints and deploy artifacts carry.

`ModelSpec` says which registered model a file holds (name, classes, stem, constructor arguments),
in which form (`residual` as trained, or `plain` after RM, with the conversion settings used; a
pruned residual model keeps its registry name and is marked `pruned`), and what it was trained on (`InputSpec`: input size, normalisation, dataset). Tools read it instead of
guessing: evaluation uses the trained input size and normalisation by default, the converter
verifies at the trained size, the benchmark times at it. It serialises to a dict of plain values,
so files stay readable with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch.nn as nn

from .registry import INPUT_SIZE, create_model

FORMS = ("residual", "plain")
SPEC_VERSION = 1


@dataclass(frozen=True)
class InputSpec:
    """The input a model was trained on; `mean`/`std` None when unknown (a model not trained here)."""
    size: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dataset: str | None = None

    @classmethod
    def from_data(cls, data: Any) -> InputSpec:
        """From a data config (conf/data/*.yaml): the input a run on it trains with."""
        return cls(int(data["input_size"]), tuple(float(m) for m in data["mean"]),
                   tuple(float(s) for s in data["std"]), str(data["name"]))


@dataclass(frozen=True)
class ConversionSettings:
    """How `rm.convert` turned the residual form into the plain one."""
    downsample: str = "reserve_input"
    fuse_bn: bool = True


@dataclass(frozen=True)
class ModelSpec:
    name: str | None                      # registered model; None for a plain chain of unknown origin
    num_classes: int
    stem: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)   # constructor arguments, e.g. {"widths": [...]}
    form: str = "residual"
    conversion: ConversionSettings | None = None            # set for the plain form
    input: InputSpec | None = None                          # None: not trained here, nominal size
    pruned: bool = False      # residual form with narrower layers than `build()` makes (files keep their shapes)

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")

    @property
    def input_size(self) -> int:
        """The trained input size, else the stem's nominal one (224 without a stem)."""
        if self.input is not None:
            return self.input.size
        return INPUT_SIZE.get(self.stem, 224)

    @property
    def label(self) -> str:
        return (self.name or "plain model") + (" (plain)" if self.form == "plain" else "")

    def build(self) -> nn.Module:
        """A freshly initialised registry model (training mode) of the residual form."""
        if self.form != "residual" or self.name is None:
            raise ValueError(f"{self.label} is a plain chain; its layers come from the file that holds it")
        return create_model(self.name, num_classes=self.num_classes, stem=self.stem or "imagenet", **self.kwargs)

    def as_plain(self, conversion: ConversionSettings) -> ModelSpec:
        return replace(self, form="plain", conversion=conversion)

    def to_dict(self) -> dict[str, Any]:
        return {"spec_version": SPEC_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = {k: v for k, v in d.items() if k != "spec_version"}
        if d.get("conversion") is not None:
            d["conversion"] = ConversionSettings(**d["conversion"])
        if d.get("input") is not None:
            raw = dict(d["input"])
            for key in ("mean", "std"):
                raw[key] = tuple(raw[key]) if raw.get(key) is not None else None
            d["input"] = InputSpec(**raw)
        return cls(**{**d, "kwargs": dict(d.get("kwargs") or {})})
