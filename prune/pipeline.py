"""The pruning job (`prune.py`): sparse training -> RM conversion -> pruning -> fine-tuning -> report.

    <output_dir>/prune-<model>-<data>-sr<sr>/sparse/            sparse-training run (shared by criteria)
    <output_dir>/prune-<model>-<data>-sr<sr>/<criterion>/       per threshold or ratio:
        rmnet/pruned.pt  rmnet/finetune/   resnet/pruned.pt  resnet/finetune/   report.json  report.md

Both families start from the same sparse-trained residual model (identity shortcuts with a BN, paper
§3.4: `model.kwargs.shortcut_bn=true`): `rmnet` converts it with the `conversion` policy (BN kept,
`reserve_shortcut`), sets the identity BNs' statistics from training data (so reserved and merged
channels are ranked by their real scale), verifies the result and prunes the plain chain; `resnet`
prunes the residual model, where channels tied by additions go only together. Every model is read
and written through `artifacts`, and trained by the stages of train.py (`engine.stages`).
"""
from __future__ import annotations

import copy
import functools
import logging
import os
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

import artifacts
import engine.distributed as D
from artifacts import ConversionPolicy
from data import calibration_loader
from engine import stages
from engine.config import command_line_keys, model_kwargs, per_process_batch
from engine.evaluate import evaluate
from engine.faults import probe_run_dir
from engine.inputs import check_data, data_for
from models import InputSpec, ModelSpec, create_model
from rm import recalibrate_identity_bn

from .plain import PruneResult, prune_plain
from .report import SCHEMA, device_line, missed, model_stats, warn_missed, write_report
from .residual import check_residual, prune_residual
from .surgery import PruneError

log = logging.getLogger("rmnet.prune")
FAMILIES = ("rmnet", "resnet")


def criterion(p: Any) -> str:
    return f"ratio{p.ratio:g}" if p.ratio is not None else f"thr{p.threshold:g}"


def run_root(cfg: DictConfig, sr: float | None | str = "run") -> str:
    """The run's folder, named after the sparsity factor its model was trained with (`sr`; this run's
    prune.sr by default, None for a checkpoint that was not sparse-trained)."""
    sr = cfg.prune.sr if sr == "run" else sr
    name = f"prune-{cfg.model.name}-{cfg.data.name}-" + (f"sr{sr:g}" if sr is not None else "not-sparse")
    return cfg.prune.out_dir or os.path.join(cfg.output_dir, name)


def trained_sr(art: artifacts.Artifact) -> float | None:
    """The BN-scale penalty (hooks.bn_l1.sr) a training checkpoint was trained with; None if none."""
    penalty = ((art.meta.get("config") or {}).get("hooks") or {}).get("bn_l1")
    return float(penalty["sr"]) if penalty else None


def check_settings(cfg: DictConfig) -> None:
    """The pruning settings, before any training starts."""
    p = cfg.prune
    if p.ratio is None and p.threshold is None:
        raise ValueError("set prune.threshold or prune.ratio")
    if p.ratio is not None and not 0 <= p.ratio < 1:
        raise ValueError(f"prune.ratio must be in [0, 1), got {p.ratio}")
    if p.ratio is None and not p.threshold > 0:
        raise ValueError(f"prune.threshold must be positive, got {p.threshold}")
    unknown = set(p.families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"prune.families: unknown {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    if cfg.conversion.fuse_bn:
        raise ValueError("pruning ranks channels by BatchNorm scale: use conversion=keep_bn (the default of prune.py)")
    for key in ("sparse_ckpt", "eval", "finetune"):
        path = p.get(key)
        if path and not os.path.isfile(path):
            raise ValueError(f"prune.{key}={path}: no such file")
    if "resnet" in p.families and not (p.eval or p.finetune):
        try:
            check_residual(shape_only_model(cfg))
        except PruneError as e:
            raise PruneError(f"prune.families has resnet, but model={cfg.model.name}: {e}; prune it through RM "
                             f"alone: prune.families=[rmnet]") from None


def shape_only_model(cfg: DictConfig) -> nn.Module:
    """The run's model built on the meta device (no weights): whether a pruner supports it, before any work."""
    with torch.device("meta"):
        return create_model(cfg.model.name, num_classes=int(cfg.data.num_classes), stem=cfg.data.stem,
                            **model_kwargs(cfg.model))


def train_cfg(cfg: DictConfig, section: str, out_dir: str, run_name: str, hooks: dict[str, Any] | None = None,
              **keys: Any) -> DictConfig:
    """The train config of one trainer run of a pruning job (prune.py, amc.py, resrep.py): the user's
    settings without the job's own `section` and without a sparsity penalty (bn_l1) of their own,
    `hooks` added, a fixed run directory that a re-run resumes, and `keys` overridden."""
    tcfg = copy.deepcopy(cfg)
    with open_dict(tcfg):
        del tcfg[section]
        tcfg.output_dir, tcfg.run_name, tcfg.resume = out_dir, run_name, "auto"
        tcfg.hooks.pop("bn_l1", None)
        for name, kwargs in (hooks or {}).items():
            tcfg.hooks[name] = kwargs
        for key, value in keys.items():
            OmegaConf.update(tcfg, key, value, merge=False)
    return tcfg


def sparse_train(cfg: DictConfig) -> str:
    """Train the residual model with shortcut BNs and the bn_l1 penalty; returns its best.pt.
    Re-running resumes (or, when finished, reuses) the run."""
    root = run_root(cfg)
    tcfg = train_cfg(cfg, "prune", root, "sparse", {"bn_l1": {"sr": float(cfg.prune.sr)}},
                     **{"final.enabled": False, "model.kwargs.shortcut_bn": True})
    stages.train(tcfg, *stages.build(tcfg))
    return os.path.join(root, "sparse", "best.pt")


def finetune(cfg: DictConfig, model: nn.Module, spec: ModelSpec, out_dir: str, section: str = "prune") -> nn.Module:
    """Fine-tune a pruned model with the trainer (no sparsity penalty, `<section>.finetune_epochs`
    epochs at `<section>.finetune_lr`); returns its best weights."""
    p = cfg[section]
    keys: dict[str, Any] = {"epochs": int(p.finetune_epochs), "final.enabled": False}
    if p.finetune_lr is not None:
        keys["optim.lr"] = float(p.finetune_lr)
    stages.train(train_cfg(cfg, section, out_dir, "finetune", **keys), copy.deepcopy(model), spec)
    return artifacts.load(os.path.join(out_dir, "finetune", "best.pt")).model


def _top1(model: nn.Module, loader, cfg: DictConfig, desc: str) -> float:
    return evaluate(model, loader, progress=cfg.progress, desc=desc)["top1"]


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


def prune_family(cfg: DictConfig, residual: artifacts.Artifact, family: str
                 ) -> tuple[PruneResult, artifacts.Artifact | None]:
    """Prune the sparse-trained `residual` as `family`; returns (result, the unpruned recalibrated
    plain model for rmnet, else None)."""
    p = cfg.prune
    crit = {"ratio": float(p.ratio)} if p.ratio is not None else {"threshold": float(p.threshold)}
    if family == "resnet":
        return prune_residual(residual.model, **crit), None
    plain = to_prunable_plain(cfg, residual, p.calib_batches)
    return prune_plain(plain.model, **crit), plain


def save_model(model: nn.Module, spec: ModelSpec, path: str, data: Any, **meta: Any) -> None:
    """Write a pruned model, every pruner's one way: a deploy artifact (plain form) or a pruned ResNet
    file, with the data config and input size its numbers were measured with (`data`), which
    evaluate.py and benchmark.py then use by default (the same validation set)."""
    spec = replace(spec, input=InputSpec.from_data(data), pruned=spec.form != "plain")
    meta = {**meta, "data_config": OmegaConf.to_container(data, resolve=True)}
    if spec.form == "plain":
        artifacts.save_deploy(model, spec, path, **meta)
    else:
        artifacts.save_pruned(model, spec, path, **meta)


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job for one sr and one threshold/ratio; returns the report."""
    check_settings(cfg)
    probe_run_dir(run_root(cfg), "prune.out_dir" if cfg.prune.out_dir else "output_dir", "the output folder")
    p = cfg.prune
    ckpt = p.sparse_ckpt or sparse_train(cfg)
    residual = artifacts.load(ckpt)
    check_stored_model(residual.spec, cfg, ckpt)
    size, sr = residual.spec.input_size, trained_sr(residual)
    out = os.path.join(run_root(cfg, sr), criterion(p))
    val = stages.build_val_loader(cfg)
    reference = {**model_stats(residual.model, size, p.bench), "top1": _top1(residual.model, val, cfg, "sparse model")}
    if sr is None:
        log.warning(f"warning: {ckpt} was not sparse-trained (no hooks.bn_l1): its BN scales need not rank channels; "
                    "leave prune.sparse_ckpt=null to sparse-train first")
    report = {"schema": SCHEMA, "model": cfg.model.name, "data": cfg.data.name, "sr": sr,
              "threshold": None if p.threshold is None else float(p.threshold),
              "ratio": None if p.ratio is None else float(p.ratio), "criterion": criterion(p),
              "sparse_checkpoint": ckpt, "sparse_trained": sr is not None, "device": device_line(p.bench),
              "bench": OmegaConf.to_container(p.bench), "reference": reference, "families": {}}
    for family in p.families:
        result, plain = prune_family(cfg, residual, family)
        spec = plain.spec if plain is not None else replace(residual.spec, pruned=True)
        fam_dir = os.path.join(out, family)
        artifact = os.path.join(fam_dir, "pruned.pt")
        meta = {"family": family, "sr": sr, "threshold": result.threshold}
        if plain is not None:   # the error of the RM conversion the pruned chain starts from
            meta["verify"] = plain.meta["verify"]
        save_model(result.model, spec, artifact, cfg.data, **meta)
        before = model_stats(plain.model, size, p.bench) if plain is not None else reference
        if plain is not None:
            before["top1"] = _top1(plain.model, val, cfg, "RM plain")
        top1_pruned = _top1(result.model, val, cfg, f"{family} pruned")
        flag = missed(result.removed)
        warn_missed(log, family, flag, "raise prune.threshold (or set prune.ratio), or sparse-train with a larger prune.sr")
        tuned = result.model
        if p.finetune_epochs > 0:
            tuned = finetune(cfg, result.model, spec, fam_dir)
            save_model(tuned, spec, os.path.join(fam_dir, "finetuned.pt"), cfg.data, **meta)
        after = model_stats(tuned, size, p.bench)
        report["families"][family] = {
            "threshold": result.threshold, "before": before, "after": after,
            "pruned_param_ratio": 1 - after["params"] / before["params"],
            "params_vs_reference": after["params"] / reference["params"],
            "speedup": after["img_s"] / reference["img_s"], "top1_pruned": top1_pruned,
            "top1_finetuned": _top1(tuned, val, cfg, f"{family} fine-tuned") if p.finetune_epochs > 0 else None,
            "channels_removed": result.removed, "channels_total": result.total,
            "approximate_channels": result.approximate, "layers": result.layers, "artifact": artifact, "flag": flag}
        log.info(f"{family}: {result.removed}/{result.total} channels removed, params {after['params']:,} "
                 f"({100 * report['families'][family]['pruned_param_ratio']:.1f}% pruned), top-1 pruned "
                 f"{top1_pruned:.2f}")
    report["rows"] = [comparison_row(report, family) for family in report["families"]]
    paths = write_report(report, out)
    log.info(f"wrote {paths[0]} and {paths[1]}")
    return report


def comparison_row(report: dict[str, Any], family: str) -> dict[str, Any]:
    """One pruned model in the form every pruner's report shares (prune.compare merges them)."""
    f = report["families"][family]
    return {"method": "slimming", "form": "rm" if family == "rmnet" else "residual", "model": report["model"],
            "data": report["data"], "target": report["criterion"], "params": f["after"]["params"],
            "macs": f["after"]["macs"], "top1_before": f["before"].get("top1"), "top1_pruned": f["top1_pruned"],
            "top1_finetuned": f["top1_finetuned"], "img_s": f["after"]["img_s"], "artifact": f["artifact"],
            "flag": f["flag"]}


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


def family_of(art: artifacts.Artifact) -> str:
    return "rmnet" if art.spec.form == "plain" else "resnet"


def with_file_data(cfg: DictConfig, art: artifacts.Artifact) -> DictConfig:
    """`cfg` with the data a model file is measured on: the data config it stores, at its trained input
    (as evaluate.py reads it), unless the command line sets data= or data.* itself."""
    explicit = command_line_keys()
    if art.data_config is None or any(k.split(".")[0] == "data" for k in explicit):
        check_data(art.spec, cfg.data, art.origin)
        return cfg
    data, _ = data_for(None, art.data_config, art.spec.input, explicit, art.origin)
    check_data(art.spec, data, art.origin)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.data = data
    return cfg


def evaluate_file(cfg: DictConfig, path: str) -> dict[str, Any]:
    """`prune.eval=PATH`: top-1, params, MACs and img/s of one model file (on the data it stores, at its
    trained input size)."""
    check_settings(cfg)
    art = artifacts.load(path)
    cfg = with_file_data(cfg, art)
    stats = {**model_stats(art.model, int(cfg.data.input_size), cfg.prune.bench),
             "top1": _top1(art.model, stages.build_val_loader(cfg), cfg, "eval"), "family": family_of(art),
             "path": path}
    log.info(f"{path}: top-1 {stats['top1']:.2f}, {stats['params']:,} params, {stats['macs']:,} MACs, "
             f"{stats['img_s']:.0f} img/s ({device_line(cfg.prune.bench)})")
    return stats


def finetune_file(cfg: DictConfig, path: str, explicit: set[str] = frozenset()) -> dict[str, Any]:
    """`prune.finetune=PATH`: fine-tune a pruned model file beside it for `prune.finetune_epochs` on the
    data it stores, then evaluate it. `epochs` (the sparse-training length) has no say here: set
    explicitly (`explicit` holds the command line's keys) it is refused rather than ignored, and so is
    an earlier result."""
    check_settings(cfg)
    if "epochs" in explicit:
        raise ValueError(f"epochs={cfg.epochs} is the sparse-training length; fine-tuning runs for "
                         f"prune.finetune_epochs ({cfg.prune.finetune_epochs}): pass prune.finetune_epochs=N instead")
    out_dir = os.path.dirname(os.path.abspath(path))
    for result in ("finetuned.pt", "finetune"):
        if os.path.exists(os.path.join(out_dir, result)):
            raise ValueError(f"{os.path.join(out_dir, result)} exists from an earlier fine-tune of this model; move "
                             f"it away (or copy {os.path.basename(path)} to another folder) to fine-tune again")
    art = artifacts.load(path)
    cfg = with_file_data(cfg, art)
    tuned = finetune(cfg, art.model, art.spec, out_dir)
    tuned_path = os.path.join(out_dir, "finetuned.pt")
    meta = {k: v for k, v in art.meta.items() if k not in ("config", "data_config")}
    save_model(tuned, art.spec, tuned_path, cfg.data, **{**meta, "family": family_of(art)})
    return evaluate_file(cfg, tuned_path)
