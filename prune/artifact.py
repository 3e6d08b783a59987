"""Files of the pruning pipeline: pruned residual models and residual checkpoints with shortcut BNs.

A pruned plain model is an ordinary deploy artifact (`rm.save_deploy`). A pruned ResNet is not a
plain chain, so it is saved as its registry config plus the conv groups and the weights; loading
rebuilds the registry model and shrinks each layer to the saved shapes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

import models
from engine.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_file

from .shortcut import add_shortcut_bn, has_shortcut_bn

FORMAT = "rmnet-pruned-residual"
VERSION = 1


def _registry_model(cfg: dict[str, Any]) -> nn.Module:
    kwargs = models.registry.constructor_kwargs(cfg)
    return models.create_model(cfg["name"], num_classes=cfg["num_classes"], stem=cfg["stem"], **kwargs)


def load_residual(path: str) -> nn.Module:
    """The residual model of a training checkpoint, with BN-only shortcuts when it was trained with
    them (`add_shortcut_bn`), in eval mode."""
    blob = load_file(path)
    cfg = dict(blob.get("model_cfg") or {}) if isinstance(blob, dict) else {}
    if "name" not in cfg:
        raise CheckpointError(f"{path} does not say which registry model it holds (no model_cfg.name); "
                              "give a training checkpoint of train.py or prune.py")
    state = extract_state_dict(blob, path)
    model = _registry_model(cfg)
    if any(k.endswith("downsample.0.running_mean") and k not in model.state_dict() for k in state):
        add_shortcut_bn(model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {cfg['name']}: {e}") from None
    model.rmnet_cfg = cfg
    return model.eval()


def save_pruned_residual(model: nn.Module, path: str, meta: dict[str, Any] | None = None) -> None:
    groups = {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    atomic_save({"format": FORMAT, "version": VERSION, "model_cfg": dict(model.rmnet_cfg),
                 "shortcut_bn": has_shortcut_bn(model), "groups": groups,
                 "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "meta": dict(meta or {})}, path)


def is_pruned_residual(blob: Any) -> bool:
    return isinstance(blob, dict) and blob.get("format") == FORMAT


def _resized(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, groups: int | None) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        out, in_pg = state[prefix + "weight"].shape[:2]
        return nn.Conv2d(in_pg * groups, out, module.kernel_size, module.stride, module.padding, module.dilation,
                         groups, module.bias is not None, module.padding_mode)
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(state[prefix + "running_mean"].numel(), module.eps, module.momentum)
    out, inp = state[prefix + "weight"].shape
    return nn.Linear(inp, out, module.bias is not None)


def load_pruned_residual(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a pruned ResNet saved by `save_pruned_residual`; returns (model in eval mode, meta)."""
    blob = load_file(path)
    if not is_pruned_residual(blob):
        raise CheckpointError(f"{path} is not a pruned residual model (no format={FORMAT!r})")
    model = _registry_model(blob["model_cfg"])
    if blob["shortcut_bn"]:
        add_shortcut_bn(model)
    state, groups = blob["state_dict"], blob["groups"]
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr,
                    _resized(module, state, name + ".", groups.get(name)))
    model.load_state_dict(state)
    model.rmnet_cfg = dict(blob["model_cfg"])
    return model.eval(), blob.get("meta", {})
