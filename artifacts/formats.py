"""The files this project writes, and how a model goes into them.

  training checkpoint  {"format": "rmnet-train", "version": 2, "model": state_dict,
                        "model_spec": ModelSpec dict, "layers": rm layer list (plain models) or None,
                        "groups": {conv: groups} (pruned residual models) or None,
                        + the trainer's state (engine/checkpoint.py)}
  deploy artifact      rm's container {"format": "rmnet-deploy", "spec": layers, "state_dict", "meta"}
                        with meta["model_spec"] and, from training, meta["data_config"]
  pruned residual      {"format": "rmnet-pruned-residual", "version": 2, "model_spec", "groups": {conv: groups},
                        "state_dict", "meta"}: a registry model whose layers are narrower than its spec's

Version 1 files (before the model spec; tests/fixtures/v1) keep loading: `artifacts.legacy` reads
their untyped `model_cfg` dicts.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

import rm
from models import ModelSpec
from rm.deploy import FORMAT as DEPLOY_FORMAT
from rm.deploy import to_spec

TRAIN_FORMAT = "rmnet-train"
TRAIN_VERSION = 2
PRUNED_FORMAT = "rmnet-pruned-residual"
PRUNED_VERSION = 2

__all__ = ["TRAIN_FORMAT", "TRAIN_VERSION", "PRUNED_FORMAT", "PRUNED_VERSION", "DEPLOY_FORMAT", "model_entries",
           "save_plain", "save_pruned"]


def conv_groups(model: nn.Module) -> dict[str, int]:
    """The group count of every conv: with the weights' shapes, what rebuilds a pruned residual model."""
    return {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def model_entries(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """The model part of a training checkpoint. A plain model holding modules the deploy format does not
    have (a training form: ResRep's compactors) is saved without its layer list: the weights resume
    the run that holds the model, and `load` says the file is such a form."""
    return {"model": model.state_dict(), "model_spec": spec.to_dict(),
            "layers": _layers(model) if spec.form == "plain" else None,
            "groups": conv_groups(model) if spec.pruned else None}


def _layers(model: nn.Module) -> list[dict[str, Any]] | None:
    try:
        return to_spec(model)
    except TypeError:
        return None


def save_plain(model: nn.Module, spec: ModelSpec, path: str, **meta: Any) -> None:
    """Write a plain model as a deploy artifact; `meta` adds plain values (verify report, accuracy,
    data_config, ...)."""
    if spec.form != "plain":
        raise ValueError(f"a deploy artifact holds a plain model; {spec.label} is {spec.form}")
    rm.save_deploy(model, path, meta={"model_spec": spec.to_dict(), **meta})


def save_pruned(model: nn.Module, spec: ModelSpec, path: str, **meta: Any) -> None:
    """Write a pruned residual model: its registry spec, the group count of every conv, the weights."""
    if not spec.pruned:
        raise ValueError(f"save_pruned writes pruned residual models; {spec.label} is not marked pruned")
    rm.atomic_save({"format": PRUNED_FORMAT, "version": PRUNED_VERSION, "model_spec": spec.to_dict(),
                    "groups": conv_groups(model), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "meta": meta}, path)
