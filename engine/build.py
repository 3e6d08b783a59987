"""The model a run trains, from the `model` and `data` configs.

`model.init` picks the starting weights:
  null          registry model `model.name`, freshly initialised
  ckpt:PATH     registry model with the weights of a training checkpoint or state dict
  deploy:PATH   the plain nn.Sequential of a deploy artifact (rm.save_deploy), e.g. a pruned model
`model.convert` (keep_bn | fuse_bn) then trains the `rm.convert`-ed plain form instead, e.g.
`model.init=ckpt:best.pt model.convert=keep_bn` fine-tunes a converted RMNet with its BatchNorms.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

import models
import rm

from .checkpoint import CheckpointError, extract_state_dict, load_file

INIT_KINDS = ("ckpt", "deploy")
CONVERT_MODES = ("keep_bn", "fuse_bn")


def is_plain(model: nn.Module) -> bool:
    return bool(getattr(model, "rmnet_cfg", {}).get("plain"))


def trained_input(data_cfg: Any) -> dict[str, Any]:
    """What a model trained on `data_cfg` expects as input: its size, normalisation and dataset.
    Recorded in checkpoints and deploy artifacts, and used by default wherever they are read."""
    return {"input_size": int(data_cfg.input_size), "mean": [float(m) for m in data_cfg.mean],
            "std": [float(s) for s in data_cfg.std], "data": str(data_cfg.name)}


def build_model(model_cfg: Any, data_cfg: Any) -> nn.Module:
    """Training-mode model with `rmnet_cfg` = {name, num_classes, stem, input_size, mean, std, data, ...}."""
    kind, path = _parse_init(model_cfg.get("init"))
    num_classes, stem = int(data_cfg.num_classes), data_cfg.stem
    if kind == "deploy":
        model, meta = rm.load_deploy(path)
        out = _classifier_width(model)
        if out != num_classes:
            raise ValueError(f"{path} classifies {out} classes but data {data_cfg.name!r} has {num_classes}")
        model.rmnet_cfg = {"name": meta.get("name", "plain"), "num_classes": num_classes, "stem": stem,
                           **trained_input(data_cfg), "plain": True}
    else:
        name = model_cfg.name
        if stem not in models.model_stems(name):
            raise ValueError(f"{name} has no {stem!r} stem (data={data_cfg.name} needs it); it exists with: "
                             f"{', '.join(models.model_stems(name))}")
        kwargs = model_cfg.get("kwargs") or {}
        kwargs = OmegaConf.to_container(kwargs) if isinstance(kwargs, DictConfig) else dict(kwargs)
        model = models.create_model(name, num_classes=num_classes, stem=stem, **kwargs)
        if kind == "ckpt":
            state = extract_state_dict(load_file(path), path)
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise CheckpointError(f"model.init={path}: weights do not fit {name} (stem={stem}, "
                                      f"classes={num_classes}): {e}") from None
        model.rmnet_cfg.update(trained_input(data_cfg))
    mode = model_cfg.get("convert")
    if mode is not None:
        if mode not in CONVERT_MODES:
            raise ValueError(f"model.convert must be null or one of {CONVERT_MODES}, got {mode!r}")
        cfg = dict(model.rmnet_cfg, plain=True)
        model = rm.convert(model.eval(), fuse_bn=mode == "fuse_bn")
        model.rmnet_cfg = cfg
    return model.train()


def _parse_init(init: str | None) -> tuple[str | None, str | None]:
    if not init:
        return None, None
    kind, sep, path = str(init).partition(":")
    if not sep or kind not in INIT_KINDS or not path:
        raise ValueError(f"model.init must be null, ckpt:PATH or deploy:PATH, got {init!r}")
    return kind, path


def _classifier_width(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the deploy model has no Linear classifier")
    return linears[-1].out_features
