"""One conversion policy for every tool: convert with the `conversion` settings, verify the plain
model against the residual one on random input, refuse above the tolerance.

The `conversion` config group (conf/conversion/) holds `downsample`, `fuse_bn` and `tolerance`;
train.py's final step, convert.py, evaluate.py, prune.py and the A.3 recalibration all go through
`to_plain` (or `check_plain` after changing a converted model), so they verify alike and refuse alike.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch.nn as nn

import rm
from models import ConversionSettings
from rm.rules import SCHEMES

from .load import Artifact


class ConversionToleranceError(ValueError):
    """The plain model's float32 output differs from the residual model's by more than the tolerance."""


@dataclass(frozen=True)
class ConversionPolicy:
    downsample: str = "reserve_input"
    fuse_bn: bool = True
    tolerance: float = 1e-4   # largest float32 relative output error accepted

    def __post_init__(self):
        if self.downsample not in SCHEMES:
            raise ValueError(f"conversion.downsample must be one of {', '.join(SCHEMES)}, got {self.downsample!r}")
        if not self.tolerance > 0:
            raise ValueError(f"conversion.tolerance must be a positive number, got {self.tolerance!r}")

    @classmethod
    def from_cfg(cls, cfg: Any) -> ConversionPolicy:
        return cls(str(cfg.downsample), bool(cfg.fuse_bn), float(cfg.tolerance))

    @property
    def settings(self) -> ConversionSettings:
        return ConversionSettings(self.downsample, self.fuse_bn)

    def check(self, report: dict[str, dict[str, float]], what: str) -> None:
        rel = report["float32"]["max_rel"]
        if rel > self.tolerance:
            raise ConversionToleranceError(
                f"{what}: the plain model's float32 output differs from the residual model's by {rel:.2e} "
                f"(relative), above conversion.tolerance={self.tolerance:g}; nothing was written. A conversion "
                f"bug or extreme weights: report it with the file")


def to_plain(artifact: Artifact, policy: ConversionPolicy, input_size: int | None = None,
             verify: bool = True, float64: bool = True) -> Artifact:
    """The plain form of a residual artifact, verified at its trained input size (meta["verify"]) and
    refused above the tolerance; `verify=False` skips the check (other ranks of a distributed job),
    `float64=False` its float64 part (large models, `rm.convert_verified`).
    A plain artifact is returned as it is, except that a policy with fuse_bn folds the BatchNorms of a
    plain model converted with BN kept (the converter walks a plain chain too)."""
    kept_bn = artifact.spec.conversion is not None and not artifact.spec.conversion.fuse_bn
    if artifact.spec.form == "plain" and not (policy.fuse_bn and kept_bn):
        return artifact
    size = input_size or artifact.spec.input_size
    kwargs = {"fuse_bn": policy.fuse_bn, "downsample": policy.downsample}
    meta = {k: v for k, v in artifact.meta.items() if k not in ("verify", "verified_input_size", "layout", "dropped")}
    if verify:
        plain, report = rm.convert_verified(artifact.model, input_size=size, float64=float64, **kwargs)
        policy.check(report, f"converting {artifact.origin}")
        # A chain exact only at some sizes is verified at the first one it accepts from the trained size up.
        meta.update(verify=report, verified_input_size=rm.deploy.allowed_size(plain, size))
    else:
        plain = rm.convert(artifact.model, **kwargs)
    settings = policy.settings if artifact.spec.form == "residual" else replace(artifact.spec.conversion, fuse_bn=True)
    return Artifact(artifact.kind, plain, artifact.spec.as_plain(settings), meta, artifact.path)


def check_plain(residual: Artifact, plain: nn.Module, policy: ConversionPolicy,
                input_size: int | None = None) -> dict[str, dict[str, float]]:
    """Verify a plain model that was changed after conversion (BN recalibration) against the residual
    one; refused above the tolerance. Returns the error report."""
    report = rm.verify(residual.model, plain, input_size or residual.spec.input_size)
    policy.check(report, f"the plain model of {residual.origin}")
    return report
