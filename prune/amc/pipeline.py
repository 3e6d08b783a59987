"""The RM + AMC job (`amc.py`): train -> RM (BN kept) -> AMC search -> prune -> fine-tune -> report,
and the AMC baseline on the residual model with the same budget, search length and fine-tuning.

    <output_dir>/amc-<model>-<data>/train/                  the residual model's training run
    <output_dir>/amc-<model>-<data>/rm_finetune/            the RM form's fine-tuning (amc.rm_finetune_epochs)
    <output_dir>/amc-<model>-<data>/r<flops_ratio>/         per budget:
        rm/{search.pt, policy.json, pruned.pt, finetune/, finetuned.pt}
        residual/{search.pt, policy.json, pruned.pt, finetune/, finetuned.pt}
        report.json  report.md  reward_curves.png

Both methods search on the same data: held-out training images score each policy (never the
validation set, which only the report's top-1 columns use), other training images give the feature
maps of the least-squares refit. The training runs are shared by every budget and resume when run
again, as do the searches (their state files). The FLOPs ratio is a fraction of the residual
model's MACs by default (`amc.budget.of=residual`: one absolute budget for both forms, the
comparison users make); `amc.budget.of=own` applies it to each model's own MACs, as the authors'
`amc_search.py --flops_ratio` does: the RM form of MobileNetV2 is MobileNetV1, which costs more than
MobileNetV2, so there RM + AMC keeps more MACs than AMC.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import artifacts
import engine.distributed as D
from data import build_dataset, build_transform, worker_count
from engine import stages
from engine.config import per_process_batch
from engine.evaluate import evaluate
from models import ModelSpec
from models.complexity import count_macs

from .. import common
from ..budget import UNITS, Budget
from ..budget import check_budget as check_cost_budget
from ..common import (
    check_stored_model,
    finish_form,
    shape_only_model,
    to_prunable_plain,
    top1,
    train_cfg,
)
from ..cost import amount, kind_suffix
from ..report import check_bench, device_line, missed, model_stats, warn_missed
from ..row import Row
from .channels import apply_policy, collect_features
from .ddpg import AgentSettings
from .env import ChannelPruningEnv, check_budget
from .graph import Graph, check_residual, graph_cost, plain_graph, residual_graph
from .report import SCHEMA, draw_reward_curves, write_amc_report
from .search import SearchSettings, search

log = logging.getLogger("rmnet.amc")
LABELS = {"rm": "RM + AMC", "residual": "AMC"}


def run_root(cfg: DictConfig) -> str:
    return common.run_root(cfg, "amc", f"amc-{cfg.model.name}-{cfg.data.name}")


def check_settings(cfg: DictConfig) -> None:
    """The AMC settings, before any training starts."""
    a = cfg.amc
    check_budget(a.flops_ratio, a.lbound, a.rbound, a.channel_round, a.reward)
    forms = common.check_forms(cfg, "amc")
    check_cost_budget(a.budget, "amc")
    check_bench(a.bench)
    if cfg.conversion.fuse_bn:
        raise ValueError("AMC prunes Conv-BN units of the RM form and fine-tunes it with its BNs: use "
                         "conversion=keep_bn (the default of amc.py)")
    common.check_counts(a, "amc", ("episodes", "holdout", "feature_batches", "points_per_image", "calib_batches"),
                        ("finetune_epochs", "rm_finetune_epochs"))
    if not isinstance(a.warmup, int) or not 0 <= a.warmup <= a.episodes:
        raise ValueError(f"amc.warmup must be an integer in [0, amc.episodes={a.episodes}], got {a.warmup!r}")
    common.check_files(a, "amc", ("checkpoint",))
    if "residual" in forms:   # a shape-only build says whether the residual baseline can run
        check_residual(shape_only_model(cfg))


def train_residual(cfg: DictConfig) -> str:
    """Train the residual model (a re-run resumes or reuses the run); returns its best.pt."""
    root = run_root(cfg)
    tcfg = train_cfg(cfg, "amc", root, "train", **{"final.enabled": False})
    stages.train(tcfg, *stages.build(tcfg))
    return os.path.join(root, "train", "best.pt")


def search_loaders(cfg: DictConfig) -> tuple[DataLoader, DataLoader]:
    """(feature batches, held-out images) from the training set without augmentation, disjoint."""
    a = cfg.amc
    dataset = build_dataset(cfg.data, "train", build_transform(cfg.data, train=False))
    if a.holdout >= len(dataset):
        raise ValueError(f"amc.holdout={a.holdout} leaves no training images for the feature maps: the training "
                         f"set has {len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    batch, workers = per_process_batch(cfg, 1), worker_count(cfg.workers)
    rest = order[a.holdout:][:a.feature_batches * batch]
    return (DataLoader(Subset(dataset, rest), batch_size=batch, num_workers=workers),
            DataLoader(Subset(dataset, order[:a.holdout]), batch_size=batch, num_workers=workers))


def search_settings(a: DictConfig, layers: int, seed: int) -> SearchSettings:
    agent = OmegaConf.to_container(a.agent)
    memory = agent.pop("memory_per_layer") * layers
    return SearchSettings(int(a.episodes), int(a.warmup), seed, AgentSettings(**agent, memory=memory))


def graph_of(model: nn.Module, spec: ModelSpec) -> Graph:
    size = spec.input_size
    return plain_graph(model, size) if spec.form == "plain" else residual_graph(model, size)


def amc_prune(cfg: DictConfig, model: nn.Module, spec: ModelSpec, out_dir: str, loaders: tuple[DataLoader, DataLoader],
              device: torch.device, desc: str, budget: Budget, residual_cost: float
              ) -> tuple[nn.Module, dict[str, Any], list[dict[str, Any]]]:
    """Search a policy for `model` under `budget` (residual_cost: the residual model's, in budget.kind,
    which budget.of=residual takes the fraction of) and prune it; returns (pruned model, the policy record,
    the search's history). The search state in `out_dir/search.pt` makes a re-run resume."""
    a = cfg.amc
    graph = graph_of(model, spec)
    cost = graph_cost(graph, model, budget)
    own = cost(graph.full)
    ratio = min(1.0, budget.target(residual_cost, own) / own)   # the environment's fraction of this form's cost
    bar = dict(desc=f"{desc}: feature maps", unit="batch", disable=None if cfg.progress else True)
    features = collect_features(model, graph, loaders[0], int(a.points_per_image), int(cfg.seed), device,
                                progress=lambda it: tqdm(it, **bar))
    model = model.cpu()
    refit = features if a.refit else None

    def score(counts: list[int]) -> float:
        pruned, _ = apply_policy(model, graph, counts, refit)
        return evaluate(pruned.to(device), loaders[1], device, progress=False)["top1"]

    env = ChannelPruningEnv(graph, score, ratio, float(a.lbound), float(a.rbound),
                            int(a.channel_round), a.reward, cost, UNITS[budget.kind])
    settings = search_settings(a, env.layers, int(cfg.seed))
    identity = {"model": spec.to_dict(), "flops_ratio": ratio, "channels": graph.full,
                "holdout": int(a.holdout), "refit": bool(a.refit), "reward": a.reward,
                "bounds": [float(a.lbound), float(a.rbound)], "channel_round": int(a.channel_round)}
    result = search(env, settings, os.path.join(out_dir, "search.pt"), identity, cfg.progress, desc)
    counts = result.best["policy"]
    pruned, _ = apply_policy(model, graph, counts, refit)
    macs = count_macs(pruned.eval(), spec.input_size)
    if macs != graph.macs(counts):   # the search's cost model and the pruned model must agree
        raise RuntimeError(f"pruned model has {macs} MACs, the cost model said {graph.macs(counts)}")
    policy = {"flops_ratio": ratio, "unit": UNITS[budget.kind], f"target_{budget.kind}": env.target,
              "cost": cost(counts), "total": env.total, "macs": macs, "total_macs": env.macs_total,
              "ratio": cost(counts) / env.total, "episode": result.best["episode"], "reward": result.best["reward"],
              "top1_holdout": result.best["top1"],
              "layers": [{"layer": s.producer, "reader": s.reader, "channels": s.channels, "kept": n}
                         for s, n in zip(graph.segments, counts)]}
    with open(os.path.join(out_dir, "policy.json"), "w") as f:
        json.dump(policy, f, indent=2)
    return pruned, policy, result.history


def start_model(cfg: DictConfig, residual: artifacts.Artifact, method: str) -> tuple[nn.Module, ModelSpec]:
    """What `method` prunes: the RM form with BN kept (identity BNs recalibrated, verified, optionally
    fine-tuned), or the residual model itself."""
    if method == "residual":
        return residual.model, dataclasses.replace(residual.spec, pruned=True)
    plain = to_prunable_plain(cfg, residual, cfg.amc.calib_batches)
    if cfg.amc.rm_finetune_epochs == 0:
        return plain.model, plain.spec
    root = run_root(cfg)
    tcfg = train_cfg(cfg, "amc", root, "rm_finetune",
                     **{"epochs": int(cfg.amc.rm_finetune_epochs), "final.enabled": False})
    stages.train(tcfg, plain.model, plain.spec)
    return artifacts.load(os.path.join(root, "rm_finetune", "best.pt")).model, plain.spec


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job for one FLOPs ratio; returns the report."""
    check_settings(cfg)
    if D.launched_by_torchrun():
        raise ValueError("amc.py runs in one process (the search is sequential); start it with python, not torchrun")
    a, device = cfg.amc, D.setup(cfg.device)
    ckpt = a.checkpoint or train_residual(cfg)
    residual = artifacts.load(ckpt)
    check_stored_model(residual.spec, cfg, ckpt)
    size = residual.spec.input_size
    out = os.path.join(run_root(cfg), f"r{a.flops_ratio:g}" + ("-own" if a.budget.of == "own" else "")
                       + kind_suffix(a.budget))
    budget = Budget.from_cfg(a.budget, a.flops_ratio, size)
    residual_graph_ = graph_of(residual.model, residual.spec)
    residual_cost = graph_cost(residual_graph_, residual.model, budget)(residual_graph_.full)
    val, loaders = stages.build_val_loader(cfg), search_loaders(cfg)
    reference = {**model_stats(residual.model, size, a.bench),
                 "top1": top1(residual.model, val, cfg, "unpruned model")}
    report: dict[str, Any] = {
        "schema": SCHEMA, "model": cfg.model.name, "data": cfg.data.name, "flops_ratio": float(a.flops_ratio),
        "checkpoint": ckpt, "device": device_line(a.bench), "bench": OmegaConf.to_container(a.bench),
        "search": {k: a[k] for k in ("episodes", "warmup", "holdout", "lbound", "rbound", "channel_round", "reward",
                                     "refit")},
        "reference": reference, "budget": budget.report(), "methods": {}, "rows": []}
    histories = {}
    for method in a.forms:
        out_dir = os.path.join(out, method)
        os.makedirs(out_dir, exist_ok=True)
        model, spec = start_model(cfg, residual, method)
        top1_before = reference["top1"] if model is residual.model else top1(model, val, cfg, f"{method} unpruned")
        pruned, policy, histories[LABELS[method]] = amc_prune(cfg, model, spec, out_dir, loaders, device,
                                                                   LABELS[method], budget, residual_cost)
        meta = {"method": method, "flops_ratio": float(a.flops_ratio), "policy": policy["layers"]}
        done = finish_form(cfg, "amc", pruned, spec, out_dir, val, size, method, **meta)
        stats, top1_pruned, top1_tuned = done.stats, done.top1_pruned, done.top1_finetuned
        flag = missed(sum(layer["channels"] - layer["kept"] for layer in policy["layers"]), policy["cost"],
                      policy[f"target_{budget.kind}"], budget.kind)
        warn_missed(log, LABELS[method], flag, "raise amc.flops_ratio's budget or lower amc.lbound")
        report["methods"][method] = {"label": LABELS[method], "form": spec.form, "policy": policy,
                                     "pruned_artifact": done.pruned_path, "stats": stats}
        report["rows"].append(Row("amc", method, cfg.model.name, cfg.data.name, budget.text(),
                                  policy[f"target_{budget.kind}"], stats["params"], stats["macs"], top1_before,
                                  top1_pruned, top1_tuned, stats["img_s"], done.path, flag, budget.kind,
                                  speeds=stats["speeds"]).as_dict())
        log.info(f"{LABELS[method]}: {amount(policy['cost'], budget.kind)} of {amount(policy['total'], budget.kind)} "
                 f"({policy['ratio']:.3f}, "
                 f"target {a.flops_ratio:g}), top-1 pruned {top1_pruned:.2f}"
                 + (f", fine-tuned {top1_tuned:.2f}" if top1_tuned is not None else ""))
    report["reward_curves"] = draw_reward_curves(histories, int(a.warmup), os.path.join(out, "reward_curves.png"))
    paths = write_amc_report(report, out)
    log.info(f"wrote {paths[0]} and {paths[1]}")
    return report
