"""`load(path)`: any file a user has, as a typed `Artifact` (kind, model, spec, metadata).

Kinds: `train` (a training checkpoint of this project), `deploy` (a plain deploy artifact), `pruned`
(a pruned residual model) and `state_dict` (bare or wrapped weights, this project's or another
layout, artifacts.layouts; they do not say which model they hold, so `name` must; a plain layout such
as RepVGG's deploy form gives the plain chain of that model).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn

import rm
from models import ConversionSettings, ModelSpec, UnknownModelError, model_family, model_stems
from rm.deploy import FORMAT as DEPLOY_FORMAT
from rm.deploy import build_plain, to_spec

from .formats import PRUNED_FORMAT, TRAIN_FORMAT
from .layouts import (
    Layout,
    check_fits,
    extract_state_dict,
    load_into,
    map_layout,
    mismatch,
    plain_chain_state,
)
from .legacy import deploy_spec_from_v1, has_shortcut_bn, spec_from_v1

KINDS = ("train", "deploy", "pruned", "state_dict")


@dataclass
class Artifact:
    kind: str                 # one of KINDS
    model: nn.Module          # in eval mode
    spec: ModelSpec
    meta: dict[str, Any] = field(default_factory=dict)   # verify report, data_config, epoch, layout, ...
    path: str | None = None

    @property
    def data_config(self) -> dict[str, Any] | None:
        """The data config the model was trained with, where the file records it."""
        return self.meta.get("data_config")

    @property
    def origin(self) -> str:
        return self.path or "<model>"


def load(source: str | os.PathLike, name: str | None = None, num_classes: int | None = None,
         stem: str | None = None, kwargs: dict[str, Any] | None = None, ema: bool = False,
         map_location: str | torch.device = "cpu") -> Artifact:
    """Read `source` and rebuild the model it holds, in eval mode.

    `name` names the registry model of a bare state dict; for files that record their model it must
    agree. `num_classes`, `stem` and `kwargs` describe a state dict's model (default: the classifier's
    width, the first stem the weights fit, no extra arguments). `ema`: a training checkpoint's EMA
    weights. Raises CheckpointError naming the file and the problem.
    """
    path = os.fspath(source)
    blob = rm.load_file(path, map_location)
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if ema and fmt != TRAIN_FORMAT:
        raise rm.CheckpointError(f"{path} is not a training checkpoint, so it has no EMA weights: drop ema=true")
    if fmt == TRAIN_FORMAT:
        artifact = _train(blob, path, ema)
    elif fmt == DEPLOY_FORMAT:
        artifact = _deploy(path, map_location)
    elif fmt == PRUNED_FORMAT:
        artifact = _pruned(blob, path)
    else:
        return _state_dict(blob, path, name, num_classes, stem, dict(kwargs or {}))
    if name and artifact.spec.name and name != artifact.spec.name:
        raise rm.CheckpointError(f"{path} holds {artifact.spec.name}, not {name}: drop model=... to use the "
                                 f"stored model")
    return artifact


def _build(spec: ModelSpec, path: str) -> nn.Module:
    try:
        return spec.build()
    except (UnknownModelError, TypeError, ValueError) as e:   # a model this code base does not have (any more)
        raise rm.CheckpointError(f"{path} records model settings this code cannot build ({spec}): "
                                 f"{e.args[0] if e.args else e}") from None


def _registry_model(spec: ModelSpec, state: dict[str, torch.Tensor], path: str,
                    groups: dict[str, int] | None = None) -> nn.Module:
    """The spec's registry model with `state`; a pruned one first shrinks every layer to the shapes in
    `state` (and the group counts in `groups`)."""
    model = _build(spec, path)
    if spec.pruned:
        if groups is None:
            raise rm.CheckpointError(f"{path} holds a pruned model but not its layers' group counts")
        for name, module in list(model.named_modules()):
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr, _resized(module, state, name + ".", groups.get(name)))
    load_into(model, state, f"{path}: the weights do not fit {spec.label}")
    return model.eval()


def _train(blob: dict[str, Any], path: str, ema: bool) -> Artifact:
    if ema and not isinstance(blob.get("ema"), dict):
        raise rm.CheckpointError(f"{path} has no EMA weights (trained with ema_decay=0)")
    state = extract_state_dict(blob["ema"] if ema else blob, path)
    config = blob.get("config") or {}
    meta = {"data_config": config.get("data"), "config": config,
            **{k: blob.get(k) for k in ("epoch", "step", "best_top1")}}
    if "model_spec" in blob:
        spec, layers = ModelSpec.from_dict(blob["model_spec"]), blob.get("layers")
    else:   # version 1
        cfg, layers = dict(blob.get("model_cfg") or {}), blob.get("spec")
        if "name" not in cfg and layers is None:
            raise rm.CheckpointError(f"{path} says neither which model it holds (model_cfg.name) nor its layers")
        fuse_bn = layers is not None and not any(layer.get("type") == "BatchNorm2d" for layer in layers)
        spec = spec_from_v1(cfg, config.get("data"), plain=layers is not None,
                            conversion=ConversionSettings(fuse_bn=fuse_bn))
        if layers is None and has_shortcut_bn(state, _build(spec, path).state_dict()):
            spec = replace(spec, kwargs={**spec.kwargs, "shortcut_bn": True})
    if spec.form == "plain" and layers is None:
        raise rm.CheckpointError(f"{path} holds a training form of a plain model (layers the deploy format does "
                                 f"not have, e.g. ResRep's compactors), which no file rebuilds: load the model "
                                 f"that run folded and saved (resrep.py writes <form>/pruned.pt)")
    model = (build_plain(layers, state, path) if layers is not None
             else _registry_model(spec, state, path, blob.get("groups")))
    return Artifact("train", model, spec, meta, path)


def _deploy(path: str, map_location: str | torch.device) -> Artifact:
    model, meta = rm.load_deploy(path, map_location)
    meta = dict(meta)
    if "model_spec" in meta:
        spec = ModelSpec.from_dict(meta.pop("model_spec"))
    else:   # version 1
        spec = deploy_spec_from_v1(meta, classifier_width(model))
    return Artifact("deploy", model, spec, meta, path)


def _resized(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, groups: int | None) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        out, in_pg = state[prefix + "weight"].shape[:2]
        return nn.Conv2d(in_pg * groups, out, module.kernel_size, module.stride, module.padding, module.dilation,
                         groups, module.bias is not None, module.padding_mode)
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(state[prefix + "running_mean"].numel(), module.eps, module.momentum)
    out, inp = state[prefix + "weight"].shape
    return nn.Linear(inp, out, module.bias is not None)


def _pruned(blob: dict[str, Any], path: str) -> Artifact:
    if "model_spec" in blob:
        spec = ModelSpec.from_dict(blob["model_spec"])
    else:   # version 1
        spec = replace(spec_from_v1(blob["model_cfg"], shortcut_bn=bool(blob.get("shortcut_bn"))), pruned=True)
    model = _registry_model(spec, blob["state_dict"], path, blob["groups"])
    return Artifact("pruned", model, spec, dict(blob.get("meta") or {}), path)


def classifier_width(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise rm.CheckpointError("the model has no Linear classifier, so its class count is unknown")
    return linears[-1].out_features


def _state_dict(blob: Any, path: str, name: str | None, num_classes: int | None, stem: str | None,
                kwargs: dict[str, Any]) -> Artifact:
    if not name:
        raise rm.CheckpointError(f"{path} does not say which model it holds (no format={TRAIN_FORMAT!r} or "
                                 f"{DEPLOY_FORMAT!r} entry): pass model=NAME, e.g. model=resnet50. benchmark.py "
                                 f"has no model=: it times the same network as models=[NAME] (speed does not "
                                 f"depend on the weights), or the deploy artifact that `python convert.py "
                                 f"checkpoint={path} model=NAME` writes")
    layout = map_layout(extract_state_dict(blob, path), path)
    if model_family(name) == "repvgg":   # every RepVGG constructor takes what the authors' files imply (rm_ratio)
        kwargs = {**layout.kwargs, **kwargs}
    if num_classes is None:   # the classifier is the last matrix of every family's state dict
        matrices = [v for v in layout.state.values() if v.ndim == 2]
        num_classes = int(matrices[-1].shape[0]) if matrices else 1000
    candidates = [ModelSpec(name, int(num_classes), s, kwargs) for s in ([stem] if stem else model_stems(name))]
    for spec in candidates:   # the first stem whose shapes the weights fit
        model, state = _target(spec, layout, path)
        if not mismatch(model, state):
            break
    else:
        spec = candidates[0]
        model, state = _target(spec, layout, path)
    what = (f"{path} ({layout.name} layout{': ' + layout.source if layout.source else ''}) does not fit {name} "
            f"(stem {spec.stem}, {num_classes} classes" + (f", {kwargs}" if kwargs else "") + ")")
    meta = {"layout": layout.name, "dropped": layout.dropped}
    if layout.plain:
        check_fits(model, state, what)
        plain = build_plain(to_spec(model), state, path)
        return Artifact("state_dict", plain, spec.as_plain(ConversionSettings()), meta, path)
    load_into(model, state, what)
    return Artifact("state_dict", model.eval(), spec, meta, path)


def _target(spec: ModelSpec, layout: Layout, path: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model the layout's weights go into, with the weights under its keys: the registry model, or
    for a plain layout its plain chain (made shape-only on the meta device, as rm.convert makes it)."""
    if not layout.plain:
        return _build(spec, path), layout.state
    with torch.device("meta"):
        chain = rm.convert(_build(spec, path).eval())
    return chain, plain_chain_state(to_spec(chain), layout.state)
