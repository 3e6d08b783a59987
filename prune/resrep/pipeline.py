"""The ResRep job (`resrep.py`): base model -> per form: compactors -> ResRep training -> fold ->
evaluate -> benchmark -> report.

    <output_dir>/resrep-<model>-<data>/base/                 base training run (when resrep.base is null)
    <output_dir>/resrep-<model>-<data>/t<target>/<form>/     train/ (the run with compactors), pruned.pt
    <output_dir>/resrep-<model>-<data>/t<target>/            report.json, report.md

Both forms start from the same trained residual model. `residual` puts compactors inside the
ResNet's blocks (ResRep as published); `rm` converts the model with the conversion policy (BN
kept), gives its identity BNs data statistics and verifies it (`prune.pipeline.to_prunable_plain`,
as slimming does), then puts compactors on every layer, reserved channels included. Both prune to
the same budget by default: (1 - resrep.target) x the residual model's MACs, so the two forms are
compared at equal cost (`resrep.budget.of=own`: x each form's own MACs). Training is `engine.stages.train` with the `resrep` hook; the transient model with
compactors is reloaded from the run's last.pt (the final weights: ResRep folds the end of training,
not the best epoch, whose masked rows need not have decayed) and folded into a deploy artifact (rm)
or a pruned ResNet (residual), both read by `artifacts.load`, evaluate.py and benchmark.py.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf, open_dict

import artifacts
import engine.distributed as D
from engine import stages
from engine.checkpoint import load_checkpoint
from rm import CheckpointError

from .. import common
from ..budget import UNITS, Budget
from ..budget import check_budget as check_cost_budget
from ..common import check_stored_model, finish_form, to_prunable_plain, top1, train_cfg
from ..cost import amount, kind_suffix
from ..report import check_bench, device_line, missed, model_stats, warn_missed, write_report
from .compactor import add_compactors
from .fold import fold_compactors, folded_cost
from .hook import ResRepHook  # also registers the `resrep` hook the training runs name
from .layout import Layout, resolve
from .report import SCHEMA, row, to_markdown

log = logging.getLogger("rmnet.resrep")


def run_root(cfg: DictConfig) -> str:
    return common.run_root(cfg, "resrep", f"resrep-{cfg.model.name}-{cfg.data.name}")


def check_settings(cfg: DictConfig) -> None:
    """The ResRep settings, before any training starts."""
    r = cfg.resrep
    if not 0 < r.target < 1:
        raise ValueError(f"resrep.target is the fraction of MACs to remove, in (0, 1); got {r.target}")
    common.check_forms(cfg, "resrep")
    check_cost_budget(r.budget, "resrep")
    check_bench(r.bench)
    if r.threshold < 0:
        raise ValueError(f"resrep.threshold must be >= 0, got {r.threshold}")
    if "rm" in r.forms and cfg.conversion.fuse_bn:
        raise ValueError("compactors follow BatchNorms: use conversion=keep_bn (the default of resrep.py)")
    if cfg.model.get("convert") or cfg.model.get("init"):
        raise ValueError("resrep.py starts from a residual model: give it as resrep.base=PATH, not model.init / "
                         "model.convert")
    if cfg.ema_decay > 0:
        raise ValueError("ResRep folds the trained weights, whose masked rows decay to zero; an EMA of them does "
                         "not: use ema_decay=0")
    common.check_files(r, "resrep", ("base",))
    common.check_channel_round(r, "resrep")
    common.check_counts(r, "resrep", ("epochs",))
    if r.lr is not None and not r.lr > 0:
        raise ValueError(f"resrep.lr must be positive (or null: optim.lr), got {r.lr}")
    ResRepHook(1, **_hook_settings(r))   # the hook checks its own settings: now, not after the base training


def _hook_settings(r: Any) -> dict[str, Any]:
    return {"lasso": float(r.lasso), "penalty_rows": str(r.penalty_rows), "interval": int(r.interval),
            "start_epochs": float(r.start_epochs), "granularity": int(r.granularity),
            "compactor_momentum": None if r.compactor_momentum is None else float(r.compactor_momentum),
            "kind": str(r.budget.kind), "runtime": str(r.budget.runtime), "batch_size": int(r.budget.batch_size)}


def base_model(cfg: DictConfig) -> artifacts.Artifact:
    """The trained residual model: resrep.base, or a run of `epochs` epochs (resumed, or reused when
    finished, by a re-run)."""
    path = cfg.resrep.base
    if not path:
        tcfg = train_cfg(cfg, "resrep", run_root(cfg), "base", **{"final.enabled": False})
        stages.train(tcfg, *stages.build(tcfg))
        path = os.path.join(run_root(cfg), "base", "best.pt")
    else:   # a file that records its model must hold the run's, at its input size (a state dict is read as model=)
        try:
            stored = artifacts.load(path)
        except CheckpointError:
            stored = None
        if stored is not None and stored.kind != "state_dict":
            check_stored_model(stored.spec, cfg, path)
    bcfg = copy.deepcopy(cfg)
    with open_dict(bcfg):
        bcfg.model.init = path   # stages.build reads it as train.py's model.init does (checked against model, data)
    model, spec = stages.build(bcfg)
    return artifacts.Artifact("train", model.eval(), spec, {}, path)


def check_reachable(model: nn.Module, size: int, target: float, form: str, budget: Budget) -> None:
    """The target must be met with one channel left in every compacted layer."""
    layout = Layout(model, size)
    ones = [torch.ones(c, dtype=torch.double) for c in layout.channels()]
    zeros = [torch.zeros(c, dtype=torch.bool) for c in layout.channels()]
    least = folded_cost(layout, model, budget)(resolve(layout.slots, zeros, ones))
    if least > target:
        raise ValueError(f"the {form} form cannot reach resrep.target: with one channel in every prunable layer it "
                         f"still costs {amount(least, budget.kind)}, above the target {amount(target, budget.kind)} (= (1 - "
                         f"target) x {budget.text()}); lower resrep.target")


def prune_form(cfg: DictConfig, residual: artifacts.Artifact, form: str, budget: Budget, out: str,
               reference: dict[str, Any], val: Any) -> dict[str, Any]:
    """One form: compactors, ResRep training, fold, evaluation; returns its report entry."""
    r, size = cfg.resrep, residual.spec.input_size
    start = residual if form == "residual" else to_prunable_plain(cfg, residual, r.calib_batches)
    before = reference if form == "residual" else {**model_stats(start.model, size, r.bench),
                                                   "top1": top1(start.model, val, cfg, "RM plain")}
    target = budget.target(budget.cost(residual.model), budget.cost(start.model))
    model = copy.deepcopy(start.model)
    add_compactors(model)
    check_reachable(model, size, target, form, budget)
    form_dir = os.path.join(out, form)
    hooks = {"resrep": {"target": float(target), **_hook_settings(r)}}
    keys: dict[str, Any] = {"epochs": int(r.epochs)}
    if r.lr is not None:
        keys["optim.lr"] = float(r.lr)
    stages.train(train_cfg(cfg, "resrep", form_dir, "train", hooks, **{"final.enabled": False, **keys}), model,
                 start.spec)
    model.load_state_dict(load_checkpoint(os.path.join(form_dir, "train", "last.pt"))["model"])
    top1_compactor = top1(model, val, cfg, f"{form} with compactors")
    result = fold_compactors(model.cpu(), float(r.threshold), int(r.channel_round))
    meta = {"method": "resrep", "form": form, "target": float(r.target), "threshold": result.threshold,
            **({"verify": start.meta["verify"]} if "verify" in start.meta else {})}
    done = finish_form(cfg, "resrep", result.model, start.spec, form_dir, val, size, form, **meta)
    after, artifact = done.stats, done.pruned_path
    cost = budget.cost(result.model)
    entry = {"before": before, "after": after, f"target_{budget.kind}": target, "cost": cost,
             "unit": UNITS[budget.kind], "macs_removed": 1 - after["macs"] / reference["macs"],
             "macs_removed_of_form": 1 - after["macs"] / before["macs"], "target_met": cost <= target,
             "top1_compactor": top1_compactor, "top1_pruned": done.top1_pruned,
             "channels_removed": result.removed, "channels_total": result.total, "masked": result.masked,
             "masked_kept": result.masked_kept, "max_removed_norm": result.max_removed_norm,
             "threshold": result.threshold, "layers": result.layers, "artifact": artifact,
             "train_dir": os.path.join(form_dir, "train")}
    entry["flag"] = missed(result.removed, cost, target, budget.kind)
    log.info(f"{form}: {result.removed}/{result.total} channels removed, {after['macs']:,} MACs = "
             f"{after['macs'] / reference['macs']:.1%} of the residual model's; {amount(cost, budget.kind)} "
             f"(target at most {amount(target, budget.kind)}), top-1 {entry['top1_pruned']:.2f} (with compactors {top1_compactor:.2f})")
    warn_missed(log, form, entry["flag"], "train longer (resrep.epochs), start masking earlier (resrep.start_epochs) "
                "or lower resrep.threshold")
    return entry


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job for one target; returns the report."""
    check_settings(cfg)
    r = cfg.resrep
    residual = base_model(cfg)
    size = residual.spec.input_size
    out = os.path.join(run_root(cfg), f"t{r.target:g}{kind_suffix(r.budget)}")
    val = stages.build_val_loader(cfg)
    reference = {**model_stats(residual.model, size, r.bench), "top1": top1(residual.model, val, cfg, "base model")}
    budget = Budget.from_cfg(r.budget, 1 - float(r.target), size)
    reference_cost = budget.cost(residual.model)
    report = {"schema": SCHEMA, "model": cfg.model.name, "data": cfg.data.name, "target": float(r.target),
              f"target_{budget.kind}": budget.target(reference_cost, reference_cost),   # the residual form's
              "unit": UNITS[budget.kind], "base": residual.path, "device": device_line(r.bench),
              "bench": OmegaConf.to_container(r.bench), "settings": OmegaConf.to_container(r),
              "reference": reference, "budget": budget.report(), "forms": {}}
    for form in r.forms:
        report["forms"][form] = prune_form(cfg, residual, form, budget, out, reference, val)
    report["rows"] = [row(report, form) for form in report["forms"]]
    if D.is_main():
        paths = write_report(report, out, to_markdown)
        log.info(f"wrote {paths[0]} and {paths[1]}")
    return report
