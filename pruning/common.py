"""What every pruner (network slimming, RM + AMC, ResRep) shares: the form names, the run folder,
settings checks, validation top-1, the trainer runs of a pruning job (train_settings, finetune), the RM
form a pruner starts from, and the one way to write a pruned model (save_model)."""
from __future__ import annotations

import copy
import functools
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import artifacts
import engine.distributed as D
from artifacts import ConversionPolicy
from data import calibration_loader
from engine import stages
from engine.config import model_kwargs, per_process_batch
from engine.inputs import check_data
from engine.settings import TrainSettings
from engine.validation import evaluate
from models import InputSpec, ModelSpec, create_model
from rm import recalibrate_identity_bn

from .report import model_stats

log = logging.getLogger("rmnet.prune")
FORMS = ("residual", "rm")   # residual: prune the residual model; rm: convert with RM, prune the plain model
OLD_FORM_KEYS = {"prune": "families", "amc": "methods"}   # the keys `<section>.forms` replaced


def check_forms(cfg: DictConfig, section: str) -> list[str]:
    """`<section>.forms`: a non-empty subset of FORMS; the key it replaced is refused in one line."""
    s = cfg[section]
    old = OLD_FORM_KEYS.get(section)
    if old and s.get(old) is not None:
        raise ValueError(f"{section}.{old} was renamed: pass {section}.forms=[{','.join(FORMS)}] "
                         f"(rmnet -> rm, resnet -> residual)")
    unknown = set(s.forms) - set(FORMS)
    if unknown or not s.forms:
        raise ValueError(f"{section}.forms: {sorted(unknown) or 'none given'}; choose from {', '.join(FORMS)}")
    return list(s.forms)


def check_counts(s: DictConfig, section: str, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    for key in positive:
        if not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"{section}.{key} must be a positive integer, got {s[key]!r}")
    for key in non_negative:
        if not isinstance(s[key], int) or s[key] < 0:
            raise ValueError(f"{section}.{key} must be a non-negative integer, got {s[key]!r}")


def check_channel_round(s: DictConfig, section: str) -> None:
    from .masks import CHANNEL_ROUNDS
    if s.channel_round not in CHANNEL_ROUNDS:
        raise ValueError(f"{section}.channel_round must be one of {', '.join(map(str, CHANNEL_ROUNDS))}, "
                         f"got {s.channel_round!r}")


def check_files(s: DictConfig, section: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        path = s.get(key)
        if path and not os.path.isfile(path):
            raise ValueError(f"{section}.{key}={path}: no such file")


def run_root(cfg: DictConfig, section: str, name: str) -> str:
    """The run's folder: `<section>.out_dir`, or <output_dir>/<name>."""
    return cfg[section].out_dir or os.path.join(cfg.output_dir, name)


def top1(model: nn.Module, loader: Any, cfg: DictConfig, desc: str) -> float:
    """Validation top-1 of a copy of `model` on the run's device."""
    device = D.setup(cfg.device, cfg.dist_timeout_min)
    return evaluate(copy.deepcopy(model).to(device), loader, device, progress=cfg.progress, desc=desc)["top1"]


def shape_only_model(cfg: DictConfig) -> nn.Module:
    """The run's model built on the meta device (no weights): whether a pruner supports it, before any work."""
    with torch.device("meta"):
        return create_model(cfg.model.name, num_classes=int(cfg.data.num_classes), stem=cfg.data.stem,
                            **model_kwargs(cfg.model))


def train_settings(cfg: DictConfig, out_dir: str, run_name: str, hooks: dict[str, Any] | None = None) -> TrainSettings:
    """The settings of one trainer run of a pruning job (prune.py, amc.py, resrep.py): the user's
    train settings without a sparsity penalty (bn_l1) of their own, `hooks` added, a fixed run
    directory that a re-run resumes, and no final conversion (the pruner converts what it prunes)."""
    settings = TrainSettings.from_cfg(cfg)
    own = {name: kwargs for name, kwargs in settings.hooks.items() if name != "bn_l1"}
    return replace(settings, output_dir=out_dir, run_name=run_name, resume="auto", final=False,
                   hooks={**own, **(hooks or {})})


def train_residual(cfg: DictConfig, root: str, run_name: str, hooks: dict[str, Any] | None = None,
                   model_kwargs: dict[str, Any] | None = None) -> str:
    """Train a pruning job's residual model in <root>/<run_name> (train_settings, with `model_kwargs`
    added to the model's; a re-run resumes, or reuses a finished run); returns its best.pt."""
    settings = train_settings(cfg, root, run_name, hooks).with_model_kwargs(**(model_kwargs or {}))
    stages.train(settings, *stages.build(settings))
    return os.path.join(root, run_name, "best.pt")


def finetune(cfg: DictConfig, model: nn.Module, spec: ModelSpec, out_dir: str, section: str) -> nn.Module:
    """Fine-tune a pruned model with the trainer (no sparsity penalty, `<section>.finetune_epochs`
    epochs at `<section>.finetune_lr`); returns its best weights."""
    p = cfg[section]
    settings = replace(train_settings(cfg, out_dir, "finetune"), epochs=int(p.finetune_epochs))
    if p.finetune_lr is not None:
        settings = settings.at_lr(p.finetune_lr)
    stages.train(settings, copy.deepcopy(model), spec)
    return artifacts.load(os.path.join(out_dir, "finetune", "best.pt")).model


def to_prunable_plain(cfg: DictConfig, residual: artifacts.Artifact, calib_batches: int) -> artifacts.Artifact:
    """The RM-converted plain model with BN kept, identity BNs recalibrated on `calib_batches` training
    batches, verified against the residual model with the conversion policy."""
    policy = ConversionPolicy.from_cfg(cfg.conversion)
    plain = artifacts.to_plain(residual, policy, verify=False)
    loader = calibration_loader(cfg.data, int(calib_batches), per_process_batch(cfg, D.world_size()),
                                cfg.workers, seed=cfg.seed)
    bar = functools.partial(tqdm, total=len(loader), desc="BN statistics", unit="batch", disable=not cfg.progress)
    recalibrate_identity_bn(plain.model, loader, progress=bar)
    plain.meta["verify"] = artifacts.check_plain(residual, plain.model, policy)
    return plain


def save_model(model: nn.Module, spec: ModelSpec, path: str, data: Any, **meta: Any) -> None:
    """Write a pruned model, every pruner's one way: a deploy artifact (plain form) or a pruned ResNet
    file, with the data config and input size its numbers were measured with (`data`), which
    evaluate.py and benchmark.py then use by default (the same validation set)."""
    spec = replace(spec, input=InputSpec.from_data(data), pruned=spec.form != "plain")
    meta = {**meta, "data_config": OmegaConf.to_container(data, resolve=True)}
    if spec.form == "plain":
        artifacts.save_plain(model, spec, path, **meta)
    else:
        artifacts.save_pruned(model, spec, path, **meta)


def check_stored_model(spec: ModelSpec, cfg: DictConfig, path: str) -> None:
    """The model a checkpoint holds must be the run's `model` and fit its `data`, at the input size it
    was trained at: every output, run directory and report is labelled with them, and every number
    is measured on that data."""
    if spec.name != cfg.model.name:
        raise ValueError(f"{path} holds {spec.name} ({spec.num_classes} classes, {spec.stem} stem) but this run's "
                         f"model is {cfg.model.name} (from model=, the recipe or the entry point's default) on "
                         f"data={cfg.data.name} ({cfg.data.num_classes} classes, {cfg.data.stem} stem): pass "
                         f"model={spec.name} and the data it was trained on")
    check_data(spec, cfg.data, path)
    if spec.input is not None and spec.input.size != cfg.data.input_size:
        raise ValueError(f"{path} was trained at {spec.input.size}x{spec.input.size} but this run's data.input_size is "
                         f"{cfg.data.input_size}: pass data.input_size={spec.input.size}")


@dataclass
class Finished:
    """A pruned form after the steps every pruner shares (finish_form)."""
    model: nn.Module             # the final model: fine-tuned when the run fine-tunes
    pruned_path: str             # <form_dir>/pruned.pt
    path: str                    # the final model's file (finetuned.pt or pruned.pt)
    top1_pruned: float
    top1_finetuned: float | None
    stats: dict[str, Any]        # model_stats of the final model


def finish_form(cfg: DictConfig, section: str, pruned: nn.Module, spec: ModelSpec, form_dir: str, val: Any,
                input_size: int, label: str, **meta: Any) -> Finished:
    """After selection, every pruner alike: write pruned.pt, evaluate it, fine-tune it for
    `<section>.finetune_epochs` when set (finetuned.pt, evaluated), measure the final model."""
    s = cfg[section]
    pruned_path = path = os.path.join(form_dir, "pruned.pt")
    if D.is_main():
        save_model(pruned, spec, pruned_path, cfg.data, **meta)
    top1_pruned = top1(pruned, val, cfg, f"{label} pruned")
    final, top1_tuned = pruned, None
    if s.get("finetune_epochs", 0) > 0:
        final = finetune(cfg, pruned, spec, form_dir, section)
        path = os.path.join(form_dir, "finetuned.pt")
        save_model(final, spec, path, cfg.data, **meta)
        top1_tuned = top1(final, val, cfg, f"{label} fine-tuned")
        if top1_tuned < top1_pruned:   # every epoch was worse than the start: the row reports the drop
            lr = s.finetune_lr if s.get("finetune_lr") is not None else cfg.optim.lr
            log.warning(f"warning: {label}: fine-tuning lowered top-1 from {top1_pruned:.2f} to {top1_tuned:.2f} "
                        f"(its best epoch); lower {section}.finetune_lr (now {lr:g}) or fine-tune longer")
    return Finished(final, pruned_path, path, top1_pruned, top1_tuned, model_stats(final, input_size, s.bench))
