"""The ResRep pruner (`resrep.py`; the job is `pruning.job.run`): base model -> per form: compactors -> ResRep training -> fold ->
evaluate -> benchmark -> report.

    <output_dir>/resrep-<model>-<data>/base/                 base training run (when resrep.base is null)
    <output_dir>/resrep-<model>-<data>/t<target>/<form>/     train/ (the run with compactors), pruned.pt
    <output_dir>/resrep-<model>-<data>/t<target>/            report.json, report.md (t<target>-<kind>...: a
                                                             params or latency budget, pruning.cost.kind_suffix)

Both forms start from the same trained residual model. `residual` puts compactors inside the
ResNet's blocks (ResRep as published); `rm` converts the model with the conversion policy (BN
kept), gives its identity BNs data statistics and verifies it (`pruning.common.to_prunable_plain`,
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
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

import artifacts
from engine import stages
from engine.checkpoint import load_checkpoint
from engine.settings import TrainSettings
from pruning import common
from pruning import job as pruning_job
from pruning.budget import UNITS, Budget
from pruning.budget import check_budget as check_cost_budget
from pruning.common import check_stored_model, top1, train_residual, train_settings
from pruning.cost import amount, kind_suffix
from pruning.job import Form, Job, Pruner, Selection
from pruning.report import check_bench
from pruning.resrep.compactor import add_compactors
from pruning.resrep.fold import fold_compactors, folded_cost
from pruning.resrep.hook import (  # also registers the `resrep` hook the training runs name
    ResRepHook,
    load_masks,
)
from pruning.resrep.layout import CompactorLayout, resolve
from pruning.resrep.report import SCHEMA, budget_text, to_markdown
from rm import CheckpointError

log = logging.getLogger("rmnet.resrep")


def run_root(cfg: DictConfig) -> str:
    return common.run_root(cfg, "resrep", f"resrep-{cfg.model.name}-{cfg.data.name}")


def check_settings(cfg: DictConfig) -> None:
    """The ResRep settings, before any training starts."""
    r = cfg.resrep
    if not 0 < r.target < 1:
        raise ValueError(f"resrep.target is the fraction of the cost (resrep.budget.kind={r.budget.kind!r}) to remove, "
                         f"in (0, 1); got {r.target}")
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


def base_model(cfg: DictConfig, path: str) -> artifacts.Artifact:
    """The trained residual model in `path`: a file that records its model must hold the run's, at its
    input size; a bare state dict is read as model=."""
    try:
        stored = artifacts.load(path)
    except CheckpointError:
        stored = None
    if stored is not None and stored.kind != "state_dict":
        check_stored_model(stored.spec, cfg, path)
    settings = TrainSettings.from_cfg(cfg)
    # stages.build reads it as train.py's model.init does (checked against model, data)
    model, spec = stages.build(replace(settings, model=replace(settings.model, init=path)))
    return artifacts.Artifact("train", model.eval(), spec, {}, path)


def check_reachable(model: nn.Module, size: int, target: float, form: str, budget: Budget) -> None:
    """The target must be met with one channel left in every compacted layer."""
    layout = CompactorLayout(model, size)
    ones = [torch.ones(c, dtype=torch.double) for c in layout.channels()]
    zeros = [torch.zeros(c, dtype=torch.bool) for c in layout.channels()]
    least = folded_cost(layout, model, budget)(resolve(layout.slots, zeros, ones))
    if least > target:
        raise ValueError(f"the {form} form cannot reach resrep.target: with one channel in every prunable layer it "
                         f"still costs {amount(least, budget.kind)}, above the target {amount(target, budget.kind)} "
                         f"(= {budget.text()}); lower resrep.target")


class ResRep(Pruner):
    """ResRep: compactors after the BNs, training with the `resrep` hook until the folded model meets
    the target in the budget's kind (MACs, params or latency), the exact fold."""
    method, section, schema = "resrep", "resrep", SCHEMA
    hint = "train longer (resrep.epochs), start masking earlier (resrep.start_epochs) or lower resrep.threshold"
    to_markdown, check_settings, root = staticmethod(to_markdown), staticmethod(check_settings), staticmethod(run_root)

    def checkpoint(self, cfg: DictConfig) -> str:
        return cfg.resrep.base or train_residual(cfg, run_root(cfg), "base")

    def base_model(self, cfg: DictConfig) -> artifacts.Artifact:
        return base_model(cfg, self.checkpoint(cfg))

    def out_dir(self, cfg: DictConfig, base: artifacts.Artifact) -> str:
        return os.path.join(run_root(cfg), f"t{cfg.resrep.target:g}{kind_suffix(cfg.resrep.budget)}")

    def budget(self, cfg: DictConfig, input_size: int) -> Budget:
        return Budget.from_cfg(cfg.resrep.budget, 1 - float(cfg.resrep.target), input_size)

    def select(self, job: Job, form: str, start: artifacts.Artifact, form_dir: str, target: float) -> Selection:
        """Compactors, ResRep training to `target` (in the budget's kind), the fold of the final weights."""
        cfg, r = job.cfg, job.cfg.resrep
        model = copy.deepcopy(start.model)
        add_compactors(model)
        check_reachable(model, job.size, target, form, job.budget)
        hooks = {"resrep": {"target": float(target), **_hook_settings(r)}}
        settings = replace(train_settings(cfg, form_dir, "train", hooks), epochs=int(r.epochs))
        if r.lr is not None:
            settings = settings.at_lr(r.lr)
        stages.train(settings, model, start.spec)
        last = load_checkpoint(os.path.join(form_dir, "train", "last.pt"))
        model.load_state_dict(last["model"])
        load_masks(model, last)
        top1_compactor = top1(model, job.val, cfg, f"{form} with compactors")
        result = fold_compactors(model.cpu(), float(r.threshold), int(r.channel_round))
        meta = {"method": "resrep", "target": float(r.target), "threshold": result.threshold}
        return Selection(result.model, result.removed, meta, {"result": result, "top1_compactor": top1_compactor})

    def header(self, job: Job) -> dict[str, Any]:
        r, budget = job.cfg.resrep, job.budget
        residual = budget.cost(job.base.model)
        return {"target": float(r.target), f"target_{budget.kind}": budget.target(residual, residual),   # the residual form's
                "unit": UNITS[budget.kind], "base": job.base.path, "settings": OmegaConf.to_container(r)}

    def budget_text(self, job: Job) -> str:
        return budget_text(float(job.cfg.resrep.target), job.budget.of, job.budget.kind)

    def entry(self, job: Job, form: Form) -> dict[str, Any]:
        result, top1_compactor = form.selection.extra["result"], form.selection.extra["top1_compactor"]
        before, after, ref_macs, kind = form.before, form.done.stats, job.reference["macs"], job.budget.kind
        log.info(f"{form.name}: {result.removed}/{result.total} channels removed, {after['macs']:,} MACs = "
                 f"{after['macs'] / ref_macs:.1%} of the residual model's; {amount(form.cost, kind)} (target at most "
                 f"{amount(form.target, kind)}), top-1 {form.done.top1_pruned:.2f} (with compactors "
                 f"{top1_compactor:.2f})")
        return {"before": before, "after": after, f"target_{kind}": form.target, "cost": form.cost,
                "unit": UNITS[kind], "macs_removed": 1 - after["macs"] / ref_macs,
                "macs_removed_of_form": 1 - after["macs"] / before["macs"],
                "target_met": form.cost <= form.target, "top1_compactor": top1_compactor,
                "top1_pruned": form.done.top1_pruned, "channels_removed": result.removed,
                "channels_total": result.total, "masked": result.masked, "masked_kept": result.masked_kept,
                "max_removed_norm": result.max_removed_norm, "threshold": result.threshold, "layers": result.layers,
                "artifact": form.done.pruned_path, "train_dir": os.path.join(job.out, form.name, "train"),
                "flag": form.flag}


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job for one target; returns the report."""
    return pruning_job.run(cfg, ResRep())
