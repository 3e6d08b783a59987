"""The pruning job (`prune.py`): sparse training -> RM conversion -> pruning -> fine-tuning -> report.

    <output_dir>/prune-<model>-<data>-sr<sr>/sparse/            sparse-training run (shared by criteria)
    <output_dir>/prune-<model>-<data>-sr<sr>/<criterion>/       per threshold or ratio:
        rmnet/pruned.pt  rmnet/finetune/   resnet/pruned.pt  resnet/finetune/   report.json  report.md

Both families start from the same sparse-trained residual model (identity shortcuts with a BN, paper
§3.4): `rmnet` converts it with BN kept, sets the identity BNs' statistics from training data (so
reserved and merged channels are ranked by their real scale) and prunes the plain chain; `resnet`
prunes the residual model, where channels tied by additions go only together.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf, open_dict

import data as datasets
import engine.distributed as D
import engine.trainer
import rm
from engine.checkpoint import load_checkpoint, load_file, model_from_checkpoint
from engine.config import per_process_batch
from engine.evaluate import evaluate
from rm.recalibrate import recalibrate_identity_bn

from .artifact import is_pruned_residual, load_pruned_residual, load_residual, save_pruned_residual
from .plain import PruneResult, prune_plain
from .report import SCHEMA, device_line, model_stats, write_report
from .residual import prune_residual
from .shortcut import add_shortcut_bn

log = logging.getLogger("rmnet.prune")
FAMILIES = ("rmnet", "resnet")


def criterion(p: Any) -> str:
    return f"ratio{p.ratio:g}" if p.ratio is not None else f"thr{p.threshold:g}"


def run_root(cfg: DictConfig) -> str:
    return cfg.prune.out_dir or os.path.join(cfg.output_dir, f"prune-{cfg.model.name}-{cfg.data.name}-sr{cfg.prune.sr:g}")


def _train_cfg(cfg: DictConfig, out_dir: str, run_name: str, sr: float | None, **keys: Any) -> DictConfig:
    """The train config of one trainer run: the user's settings, the bn_l1 hook with `sr` (None:
    without it), a fixed run directory that a re-run resumes, and `keys` overridden."""
    tcfg = copy.deepcopy(cfg)
    with open_dict(tcfg):
        del tcfg["prune"]
        tcfg.output_dir, tcfg.run_name, tcfg.resume = out_dir, run_name, "auto"
        tcfg.hooks.pop("bn_l1", None)
        if sr is not None:
            tcfg.hooks.bn_l1 = {"sr": float(sr)}
        for key, value in keys.items():
            OmegaConf.update(tcfg, key, value, merge=False)
    return tcfg


def _with_shortcut_bn(model: nn.Module) -> nn.Module:
    add_shortcut_bn(model)
    return model


def sparse_train(cfg: DictConfig) -> str:
    """Train the residual model with shortcut BNs and the bn_l1 penalty; returns its best.pt.
    Re-running resumes (or, when finished, reuses) the run."""
    root = run_root(cfg)
    tcfg = _train_cfg(cfg, root, "sparse", cfg.prune.sr, **{"final.enabled": False})
    engine.trainer.train(tcfg, model_transform=_with_shortcut_bn)
    return os.path.join(root, "sparse", "best.pt")


def finetune(cfg: DictConfig, model: nn.Module, out_dir: str) -> nn.Module:
    """Fine-tune a pruned model with the trainer (no sparsity penalty); returns its best weights."""
    p = cfg.prune
    keys: dict[str, Any] = {"epochs": int(p.finetune_epochs), "final.enabled": False,
                            "model.init": None, "model.convert": None}
    if p.finetune_lr is not None:
        keys["optim.lr"] = float(p.finetune_lr)
    engine.trainer.train(_train_cfg(cfg, out_dir, "finetune", None, **keys),
                         model_transform=lambda _: copy.deepcopy(model))
    best = load_checkpoint(os.path.join(out_dir, "finetune", "best.pt"))
    tuned = copy.deepcopy(model)
    tuned.load_state_dict(best["model"])
    return tuned.eval()


def _val_loader(cfg: DictConfig):
    return datasets.build_loader(cfg.data, "val", per_process_batch(cfg, D.world_size()), cfg.workers)


def _top1(model: nn.Module, loader, cfg: DictConfig, desc: str) -> float:
    return evaluate(model, loader, progress=cfg.progress, desc=desc)["top1"]


def prune_family(cfg: DictConfig, residual: nn.Module, family: str) -> tuple[PruneResult, nn.Module | None]:
    """Prune the sparse-trained `residual` as `family`; returns (result, the unpruned recalibrated
    plain model for rmnet, else None)."""
    p = cfg.prune
    crit = {"ratio": float(p.ratio)} if p.ratio is not None else {"threshold": float(p.threshold)}
    if family == "resnet":
        return prune_residual(residual, **crit), None
    plain = rm.convert(residual, fuse_bn=False, downsample=p.downsample)
    calib = datasets.build_loader(cfg.data, "train", per_process_batch(cfg, D.world_size()), cfg.workers,
                                  seed=cfg.seed)
    recalibrate_identity_bn(plain, calib, num_batches=int(p.calib_batches), progress=cfg.progress)
    result = prune_plain(plain, **crit)
    result.model.rmnet_cfg = {**residual.rmnet_cfg, "plain": True}
    return result, plain


def _save(model: nn.Module, path: str, family: str, meta: dict[str, Any]) -> None:
    if family == "rmnet":
        rm.save_deploy(model, path, meta)
    else:
        save_pruned_residual(model, path, meta)


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job for one sr and one threshold/ratio; returns the report."""
    p = cfg.prune
    if p.ratio is None and p.threshold is None:
        raise ValueError("set prune.threshold or prune.ratio")
    unknown = set(p.families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"prune.families: unknown {sorted(unknown)}; choose from {FAMILIES}")
    ckpt = p.sparse_ckpt or sparse_train(cfg)
    residual = load_residual(ckpt)
    check_stored_model(residual.rmnet_cfg, cfg, ckpt)
    size = residual.rmnet_cfg["input_size"]
    out = os.path.join(run_root(cfg), criterion(p))
    val = _val_loader(cfg)
    reference = {**model_stats(residual, size, p.bench), "top1": _top1(residual, val, cfg, "sparse model")}
    report = {"schema": SCHEMA, "model": cfg.model.name, "data": cfg.data.name, "sr": float(p.sr),
              "threshold": None if p.threshold is None else float(p.threshold),
              "ratio": None if p.ratio is None else float(p.ratio), "criterion": criterion(p),
              "sparse_checkpoint": ckpt, "device": device_line(p.bench),
              "bench": OmegaConf.to_container(p.bench), "reference": reference, "families": {}}
    for family in p.families:
        result, plain = prune_family(cfg, residual, family)
        fam_dir = os.path.join(out, family)
        artifact = os.path.join(fam_dir, "pruned.pt")
        meta = {**residual.rmnet_cfg, "family": family, "sr": float(p.sr), "threshold": result.threshold}
        if plain is not None:   # the error of the RM conversion the pruned chain starts from
            meta["verify"] = rm.verify(residual, plain, size)
        _save(result.model, artifact, family, meta)
        before = model_stats(plain, size, p.bench) if plain is not None else reference
        if plain is not None:
            before["top1"] = _top1(plain, val, cfg, "RM plain")
        top1_pruned = _top1(result.model, val, cfg, f"{family} pruned")
        tuned = result.model
        if p.finetune_epochs > 0:
            tuned = finetune(cfg, result.model, fam_dir)
            _save(tuned, os.path.join(fam_dir, "finetuned.pt"), family, meta)
        after = model_stats(tuned, size, p.bench)
        report["families"][family] = {
            "threshold": result.threshold, "before": before, "after": after,
            "pruned_param_ratio": 1 - after["params"] / before["params"],
            "params_vs_reference": after["params"] / reference["params"],
            "speedup": after["img_s"] / reference["img_s"], "top1_pruned": top1_pruned,
            "top1_finetuned": _top1(tuned, val, cfg, f"{family} fine-tuned") if p.finetune_epochs > 0 else None,
            "channels_removed": result.removed, "channels_total": result.total,
            "approximate_channels": result.approximate, "layers": result.layers, "artifact": artifact}
        log.info(f"{family}: {result.removed}/{result.total} channels removed, params {after['params']:,} "
                 f"({100 * report['families'][family]['pruned_param_ratio']:.1f}% pruned), top-1 pruned "
                 f"{top1_pruned:.2f}")
    paths = write_report(report, out)
    log.info(f"wrote {paths[0]} and {paths[1]}")
    return report


def check_stored_model(stored: dict[str, Any], cfg: DictConfig, path: str) -> None:
    """The model a checkpoint holds must be the run's `model` and fit its `data`: every output, run
    directory and report is labelled with them."""
    wanted = (cfg.model.name, int(cfg.data.num_classes), cfg.data.stem)
    held = (stored.get("name"), stored.get("num_classes"), stored.get("stem"))
    if held != wanted:
        raise ValueError(f"{path} holds {held[0]} ({held[1]} classes, {held[2]} stem) but this run is "
                         f"model={wanted[0]} on data={cfg.data.name} ({wanted[1]} classes, {wanted[2]} stem): pass "
                         f"model={held[0]} and the data it was trained on")


def load_any(path: str) -> tuple[nn.Module, str]:
    """(model in eval mode, family) from a deploy artifact, a pruned ResNet or a training checkpoint."""
    blob = load_file(path)
    if isinstance(blob, dict) and blob.get("format") == "rmnet-deploy":
        model, meta = rm.load_deploy(path)
        model.rmnet_cfg = {**{k: meta[k] for k in ("name", "num_classes", "stem", "input_size") if k in meta},
                           "plain": True}
        return model, "rmnet"
    if is_pruned_residual(blob):
        return load_pruned_residual(path)[0], "resnet"
    if isinstance(blob, dict) and blob.get("spec") is not None:
        return model_from_checkpoint(blob, path), "rmnet"
    return load_residual(path), "resnet"


def evaluate_file(cfg: DictConfig, path: str) -> dict[str, Any]:
    """`prune.eval=PATH`: top-1, params, MACs and img/s of one model file."""
    model, family = load_any(path)
    stats = {**model_stats(model, int(cfg.data.input_size), cfg.prune.bench),
             "top1": _top1(model, _val_loader(cfg), cfg, "eval"), "family": family, "path": path}
    log.info(f"{path}: top-1 {stats['top1']:.2f}, {stats['params']:,} params, {stats['macs']:,} MACs, "
             f"{stats['img_s']:.0f} img/s ({device_line(cfg.prune.bench)})")
    return stats


def finetune_file(cfg: DictConfig, path: str, explicit: set[str] = frozenset()) -> dict[str, Any]:
    """`prune.finetune=PATH`: fine-tune a pruned model file beside it for `prune.finetune_epochs`, then
    evaluate it. `epochs` (the sparse-training length) has no say here: set explicitly (`explicit`
    holds the command line's keys) it is refused rather than ignored, and so is an earlier result."""
    if "epochs" in explicit:
        raise ValueError(f"epochs={cfg.epochs} is the sparse-training length; fine-tuning runs for "
                         f"prune.finetune_epochs ({cfg.prune.finetune_epochs}): pass prune.finetune_epochs=N instead")
    out_dir = os.path.dirname(os.path.abspath(path))
    for result in ("finetuned.pt", "finetune"):
        if os.path.exists(os.path.join(out_dir, result)):
            raise ValueError(f"{os.path.join(out_dir, result)} exists from an earlier fine-tune of this model; move "
                             f"it away (or copy {os.path.basename(path)} to another folder) to fine-tune again")
    model, family = load_any(path)
    tuned = finetune(cfg, model, out_dir)
    tuned_path = os.path.join(out_dir, "finetuned.pt")
    _save(tuned, tuned_path, family, {**getattr(model, "rmnet_cfg", {}), "family": family})
    return evaluate_file(cfg, tuned_path)
