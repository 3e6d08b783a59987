"""Version 1 files: their untyped model settings (`model_cfg`, deploy `meta`) as a ModelSpec.

Version 1 recorded `{"name", "num_classes", "stem", "input_size", **constructor kwargs}` (plus
`"plain": True` for plain models). Its `input_size` was the stem's nominal size, not the trained
one, unless `mean` was recorded too (files from the last version-1 commit); the training run's data
config, where the file has it, gives the trained input. Sparse-training checkpoints of the pruning
pipeline held shortcut BNs that their settings did not mention.
"""
from __future__ import annotations

from typing import Any

from models import ConversionSettings, InputSpec, ModelSpec

_SETTINGS = {"name", "num_classes", "stem", "input_size", "mean", "std", "data", "plain"}
# Deploy-artifact metadata of version 1 that is not a constructor argument.
_DEPLOY_META = {"fuse_bn", "downsample", "verify", "top1_residual", "top1_plain", "data_config", "family", "sr",
                "threshold", "recalibrated_channels", "recalibration_data"}


def spec_from_v1(cfg: dict[str, Any], data_config: dict[str, Any] | None = None, plain: bool = False,
                 conversion: ConversionSettings | None = None, shortcut_bn: bool = False) -> ModelSpec:
    kwargs = {k: v for k, v in cfg.items() if k not in _SETTINGS | _DEPLOY_META}
    if shortcut_bn:
        kwargs["shortcut_bn"] = True
    if "mean" in cfg:
        trained = InputSpec(int(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("data"))
    elif data_config is not None:
        trained = InputSpec.from_data(data_config)
    else:
        trained = None
    plain = plain or bool(cfg.get("plain"))
    return ModelSpec(cfg.get("name"), int(cfg["num_classes"]), cfg.get("stem"), kwargs,
                     "plain" if plain else "residual", (conversion or ConversionSettings()) if plain else None,
                     trained)


def deploy_spec_from_v1(meta: dict[str, Any], num_classes: int) -> ModelSpec:
    conversion = ConversionSettings(meta.get("downsample", "reserve_input"), bool(meta.get("fuse_bn", True)))
    return spec_from_v1({"num_classes": num_classes, **meta}, meta.get("data_config"), plain=True,
                        conversion=conversion)


def has_shortcut_bn(state: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Does a state dict hold identity-shortcut BNs (`downsample.0` of shape (C,)) the model lacks?"""
    return any(k.endswith("downsample.0.running_mean") and k not in expected for k in state)
