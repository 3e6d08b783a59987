"""Evaluate a checkpoint in its residual and its converted plain form (`evaluate.py`).

Accepted files:
  * training checkpoints of this project (engine/checkpoint.py): the stored model settings and the
    stored data config are used unless the command line overrides them;
  * deploy artifacts (rm.save_deploy): plain form only, their metadata gives classes and stem;
  * state dicts (bare or in a {"state_dict": ...} file) of a registry model, in this project's,
    torchvision's or the RMNet/RepVGG authors' layout (models.loading): name it with model=NAME.

A model/data mismatch (classes, stem) is an error before any data is read. Evaluation is the
trainer's exact distributed loop (`engine.evaluate.evaluate` over `data.build_loader`'s disjoint
shards): under torchrun every validation image is counted once.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

import models
import rm
from data import build_loader
from models.loading import load_pretrained
from models.registry import SETTINGS_KEYS
from rm.deploy import FORMAT as DEPLOY_FORMAT

from . import distributed as D
from .checkpoint import TRAIN_FORMAT, CheckpointError, load_file, model_from_checkpoint
from .config import command_line_keys
from .environment import environment
from .evaluate import evaluate

SCHEMA = "rmnet-eval/1"
FORMS = ("residual", "plain")


@dataclass
class Loaded:
    """What a checkpoint file gave: the forms it can be evaluated in and the settings it carries."""
    kind: str                                   # train | deploy | state_dict
    residual: nn.Module | None
    plain: nn.Module | None
    model_cfg: dict[str, Any]                   # name, num_classes, stem, input_size (those known)
    stored_data: dict[str, Any] | None = None   # the training run's data config
    conversion: dict[str, Any] | None = None    # rm.verify_conversion report
    notes: list[str] = field(default_factory=list)


def load_checkpoint_forms(path: str, model_cfg: Any, data_cfg: Any | None, ema: bool = False) -> Loaded:
    """Read `path` and rebuild the residual model it holds (or the plain one for deploy files).

    `model_cfg` is the `model` section of conf/evaluate.yaml (`name`, `kwargs`); `data_cfg` is
    needed only for files that do not record their classes and stem (bare state dicts).
    """
    blob = load_file(path)
    name = model_cfg.get("name")
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt == DEPLOY_FORMAT:
        plain, meta = rm.load_deploy(path)
        cfg = {k: meta[k] for k in SETTINGS_KEYS if k in meta}
        cfg.setdefault("num_classes", _classifier_width(plain))
        _check_name(path, name, cfg.get("name"))
        return Loaded("deploy", None, plain, cfg, meta.get("data_config"), conversion=meta.get("verify"),
                      notes=["deploy artifact: plain form only"])
    if fmt == TRAIN_FORMAT:
        model = model_from_checkpoint(blob, path, ema=ema)
        cfg = dict(model.rmnet_cfg)
        _check_name(path, name, cfg.get("name"))
        stored = (blob.get("config") or {}).get("data")
        if cfg.get("plain"):
            return Loaded("train", None, model, cfg, stored, notes=["training checkpoint of a plain model"])
        return Loaded("train", model, None, cfg, stored)
    if not name:
        raise CheckpointError(f"{path} does not say which model it holds (no format={TRAIN_FORMAT!r} "
                              f"or {DEPLOY_FORMAT!r} entry): pass model=NAME, e.g. model=resnet50")
    if data_cfg is None:
        raise CheckpointError(f"{path} records no classes or stem: pass data=<name> as well")
    kwargs = OmegaConf.to_container(model_cfg.kwargs) if isinstance(model_cfg.get("kwargs"), DictConfig) \
        else dict(model_cfg.get("kwargs") or {})
    model = models.create_model(name, num_classes=int(data_cfg.num_classes), stem=data_cfg.stem, **kwargs)
    report = load_pretrained(model, blob)
    note = f"{report.layout} layout" + (f"; dropped {len(report.dropped)} statistics-only tensors"
                                        if report.dropped else "")
    return Loaded("state_dict", model.eval(), None, dict(model.rmnet_cfg), notes=[note])


def _check_name(path: str, wanted: str | None, stored: str | None) -> None:
    if wanted and stored and wanted != stored:
        raise CheckpointError(f"{path} holds {stored}, not {wanted}: drop model=... to use the stored model")


def _classifier_width(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CheckpointError("the model has no Linear classifier, so its class count is unknown")
    return linears[-1].out_features


TRAINED_INPUT = ("input_size", "mean", "std")


def trained_input_of(loaded: Loaded) -> dict[str, Any]:
    """Input size and normalisation the model was trained with, where the file records them: in the
    model settings (written since they include `mean`), else in the stored data config (training
    checkpoints of earlier versions, whose `input_size` model setting was the stem's nominal size)."""
    if "mean" in loaded.model_cfg:
        return {k: loaded.model_cfg[k] for k in TRAINED_INPUT if k in loaded.model_cfg}
    return {k: loaded.stored_data[k] for k in TRAINED_INPUT if k in (loaded.stored_data or {})}


def resolve_data(cfg_data: Any, stored: dict[str, Any] | None, path: str, trained: dict[str, Any] | None = None,
                 explicit: set[str] = frozenset()) -> tuple[DictConfig, list[str]]:
    """The data config to evaluate on, and warnings: a data group chosen on the command line
    (`data=imagenet`) as composed, otherwise the checkpoint's stored one with `data.key=value`
    overrides on top. Either way the input size and normalisation the model was trained with
    (`trained`, from the file) apply unless set on the command line (`explicit` keys); a value that
    differs from the trained one is kept but warned about."""
    chosen = cfg_data if cfg_data is not None else OmegaConf.create({})
    if "name" in chosen:
        data = OmegaConf.create(OmegaConf.to_container(chosen))
    elif stored is None:
        raise ValueError(f"{path} stores no data settings: pass data=<name> (synthetic, cifar10, cifar100, "
                         f"imagenet) and data.root=... if the files are not in the default place")
    else:
        data = OmegaConf.merge(OmegaConf.create(stored), chosen)
    warnings = []
    for key in TRAINED_INPUT:
        if key not in (trained or {}):
            continue
        if f"data.{key}" not in explicit:
            data[key] = trained[key]
        elif OmegaConf.to_container(data)[key] != trained[key]:
            warnings.append(f"data.{key}={OmegaConf.to_container(data)[key]} differs from the model's training "
                            f"({trained[key]}): results at other settings than it was trained with can be far off")
    return data, warnings


def check_compatible(loaded: Loaded, data: DictConfig, path: str) -> None:
    """Classes and stem of the model must be those of the data; raises ValueError naming both."""
    model_net = loaded.residual or loaded.plain
    classes = loaded.model_cfg.get("num_classes") or _classifier_width(model_net)
    if int(classes) != int(data.num_classes):
        raise ValueError(f"{path} classifies {classes} classes but data {data.name!r} has {data.num_classes}: "
                         f"evaluate on the dataset the model was trained for")
    stem = loaded.model_cfg.get("stem")
    if stem and stem != data.stem:
        raise ValueError(f"{path} has the {stem!r} stem ({models.INPUT_SIZE[stem]}x{models.INPUT_SIZE[stem]} "
                         f"input) but data {data.name!r} uses the {data.stem!r} stem: choose matching data")


def add_plain_form(loaded: Loaded, input_size: int, downsample: str, check: bool = True) -> None:
    """Convert the residual model (BN fused) and, when `check`, measure the conversion error."""
    if loaded.residual is None:
        return
    kwargs = {"fuse_bn": True, "downsample": downsample}
    if check:
        loaded.plain, loaded.conversion = rm.convert_verified(loaded.residual, input_size=input_size, **kwargs)
    else:
        loaded.plain = rm.convert(loaded.residual, **kwargs)


def format_table(results: dict[str, dict[str, float]], conversion: dict | None) -> str:
    lines = [f"{'form':9s} {'top-1':>7s} {'top-5':>7s} {'loss':>8s} {'img/s':>9s} {'images':>8s}"]
    for form, r in results.items():
        lines.append(f"{form:9s} {r['top1']:7.2f} {r['top5']:7.2f} {r['loss']:8.4f} {r['img_s']:9.1f} "
                     f"{r['num_samples']:8d}")
    skipped = max(r.get("skipped", 0) for r in results.values())
    if skipped:
        lines.append(f"{skipped} undecodable image(s) skipped (data.bad_images=skip): not counted in the images above")
    if len(results) == 2:
        lines.append(f"top-1 difference plain - residual: {results['plain']['top1'] - results['residual']['top1']:+.3f}")
    for dtype, e in (conversion or {}).items():
        lines.append(f"conversion error {dtype}: max abs {e['max_abs']:.3e}, max rel {e['max_rel']:.3e}")
    return "\n".join(lines)


def default_output(checkpoint: str, data_name: str) -> str:
    return f"{os.path.splitext(checkpoint)[0]}.eval-{data_name}.json"


def run(cfg: DictConfig, explicit: set[str] | None = None) -> dict[str, Any] | None:
    """Evaluate `cfg.checkpoint` (conf/evaluate.yaml); every rank runs it, rank 0 reports and
    returns the report (None elsewhere). `explicit`: the keys set on the command line (default: those
    of the running Hydra app)."""
    device = D.setup(cfg.device)
    try:
        return _run(cfg, device, command_line_keys() if explicit is None else explicit)
    finally:
        D.cleanup()


def _run(cfg: DictConfig, device: torch.device, explicit: set[str]) -> dict[str, Any] | None:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ValueError("pass checkpoint=PATH (a training checkpoint, deploy artifact or state dict)")
    path = cfg.checkpoint
    forms = list(cfg.forms)
    if not forms or set(forms) - set(FORMS):
        raise ValueError(f"forms must be a non-empty subset of {list(FORMS)}, got {forms}")
    chosen = cfg.get("data")
    loaded = load_checkpoint_forms(path, cfg.model, chosen if chosen is not None and "name" in chosen else None,
                                   ema=cfg.ema)
    data, warnings = resolve_data(chosen, loaded.stored_data, path, trained_input_of(loaded), explicit)
    if D.is_main():
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    check_compatible(loaded, data, path)
    if "plain" in forms:
        add_plain_form(loaded, int(data.input_size), cfg.downsample, check=D.is_main())
    nets = {"residual": loaded.residual, "plain": loaded.plain}
    skipped = [f for f in forms if nets[f] is None]
    forms = [f for f in forms if nets[f] is not None]
    if not forms:
        raise ValueError(f"{path} ({loaded.kind}) has no {' or '.join(skipped)} form to evaluate")

    loader = build_loader(data, "val", batch_size=cfg.batch_size, workers=cfg.workers, train=False)
    results = {}
    for form in forms:
        net = nets[form].to(device)
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        results[form] = evaluate(net, loader, device, cfg.amp, cfg.channels_last, progress=cfg.progress,
                                 desc=f"eval {form}")
    if not D.is_main():
        return None

    notes = loaded.notes + [f"{f} form not available in a {loaded.kind} file" for f in skipped] + warnings
    report = {
        "schema": SCHEMA, "checkpoint": os.path.abspath(path), "kind": loaded.kind, "model": loaded.model_cfg,
        "data": OmegaConf.to_container(data, resolve=True), "split": "val",
        "settings": {"batch_size": cfg.batch_size, "amp": cfg.amp, "channels_last": cfg.channels_last,
                     "ema": cfg.ema, "downsample": cfg.downsample, "world_size": D.world_size()},
        "results": results, "conversion_error": loaded.conversion, "notes": notes,
        "environment": environment(str(device)),
    }
    print(f"{path}: {loaded.model_cfg.get('name', 'plain model')} ({loaded.kind}) on {data.name} val, "
          f"{D.world_size()} process(es)")
    for note in notes:
        print(f"note: {note}")
    print(format_table(results, loaded.conversion))
    out = cfg.out or default_output(path, data.name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out}")
    return report
