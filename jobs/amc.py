"""The RM + AMC pruner (`amc.py`; the job is `pruning.job.run`): train -> RM (BN kept) -> AMC search ->
prune -> fine-tune -> report, and the AMC baseline on the residual model with the same budget, search length and fine-tuning.

    <output_dir>/amc-<model>-<data>/train/                  the residual model's training run
    <output_dir>/amc-<model>-<data>/rm_finetune/            the RM form's fine-tuning (amc.rm_finetune_epochs)
    <output_dir>/amc-<model>-<data>/r<flops_ratio>/         per budget (-own, and -<kind>[-<runtime>-b<batch>]
                                                            for a params or latency budget: pruning.cost.kind_suffix):
        rm/{search.pt, policy.json, pruned.pt, finetune/, finetuned.pt}
        residual/{search.pt, policy.json, pruned.pt, finetune/, finetuned.pt}
        report.json  report.md  reward_curves.png

Both methods search on the same data: held-out training images score each policy (never the
validation set, which only the report's top-1 columns use), other training images give the feature
maps of the least-squares refit. The training runs are shared by every budget and resume when run
again, as do the searches (their state files). The FLOPs ratio is a fraction of a cost
(`amc.budget.kind`: MACs, params or latency), the residual model's by default
(`amc.budget.of=residual`: one absolute budget for both forms, the comparison users make);
`amc.budget.of=own` applies it to each model's own cost, as the authors'
`amc_search.py --flops_ratio` does: the RM form of MobileNetV2 is MobileNetV1, which costs more than
MobileNetV2, so there RM + AMC keeps more MACs than AMC.

The authors' network (`model=mobilenetv2`, ReLU6) has no exact RM form: `amc.relu6=approximate`
converts its ReLU copy (`models.mobilenet.relu6_as_relu`, their step 2), measures how far the
converted model is from the ReLU6 one (output on random input, validation top-1; logged and in the
report's `conversion`), and `amc.rm_finetune_epochs` fine-tunes it before the search, as they do.
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
import rm
from data import build_dataset, build_transform, worker_count
from engine import stages
from engine.config import per_process_batch
from engine.validation import evaluate
from models import ModelSpec
from models.complexity import count_macs
from models.mobilenet import has_relu6, relu6_as_relu
from pruning import common
from pruning import job as pruning_job
from pruning.amc.channels import apply_policy, collect_features
from pruning.amc.ddpg import AgentSettings
from pruning.amc.env import ChannelPruningEnv, check_budget
from pruning.amc.graph import Graph, check_residual, graph_cost, plain_graph, residual_graph
from pruning.amc.report import SCHEMA, draw_reward_curves, to_markdown
from pruning.amc.search import SearchSettings, search
from pruning.budget import UNITS, Budget
from pruning.budget import check_budget as check_cost_budget
from pruning.common import shape_only_model, to_prunable_plain, top1, train_residual, train_settings
from pruning.cost import amount, kind_suffix
from pruning.job import Form, Job, Pruner, Selection
from pruning.report import check_bench

log = logging.getLogger("rmnet.amc")
LABELS = {"rm": "RM + AMC", "residual": "AMC"}
RELU6 = ("exact", "approximate")      # amc.relu6: refuse ReLU6 (the RM default) | convert it as ReLU
REWARD_METRICS = ("top1", "top5")     # amc.reward_metric: the held-out accuracy the reward reads


def run_root(cfg: DictConfig) -> str:
    return common.run_root(cfg, "amc", f"amc-{cfg.model.name}-{cfg.data.name}")


def check_settings(cfg: DictConfig) -> None:
    """The AMC settings, before any training starts."""
    a = cfg.amc
    check_budget(a.flops_ratio, a.lbound, a.rbound, a.channel_round, a.reward)
    for key, choices in (("relu6", RELU6), ("reward_metric", REWARD_METRICS)):
        if a[key] not in choices:
            raise ValueError(f"amc.{key}={a[key]!r}: choose one of {', '.join(choices)}")
    forms = common.check_forms(cfg, "amc")
    check_cost_budget(a.budget, "amc")
    check_bench(a.bench)
    if cfg.conversion.fuse_bn:
        raise ValueError("AMC prunes Conv-BN units of the RM form and fine-tunes it with its BNs: use "
                         "conversion=keep_bn (the default of amc.py)")
    common.check_counts(a, "amc", ("episodes", "holdout", "feature_batches", "points_per_image", "calib_batches"),
                        ("finetune_epochs", "rm_finetune_epochs"))
    if a.search_batch_size is not None:
        common.check_counts(a, "amc", ("search_batch_size",))
    if not isinstance(a.warmup, int) or not 0 <= a.warmup <= a.episodes:
        raise ValueError(f"amc.warmup must be an integer in [0, amc.episodes={a.episodes}], got {a.warmup!r}")
    common.check_files(a, "amc", ("checkpoint",))
    if D.launched_by_torchrun():
        raise ValueError("amc.py runs in one process (the search is sequential); start it with python, not torchrun")
    if "residual" in forms:   # a shape-only build says whether the residual baseline can run
        check_residual(shape_only_model(cfg))
    if "rm" in forms:   # ... and whether the RM form exists (a meta-device conversion: no weights)
        check_convertible(shape_only_model(cfg).eval(), a.relu6, cfg.model.name)


def check_convertible(model: nn.Module, relu6: str, name: str) -> None:
    """ReLU6 is refused by the exact conversion (its one-line reason) and only approximated on request."""
    if relu6 == "approximate":
        if not has_relu6(model):
            raise ValueError(f"amc.relu6=approximate: {name} has no ReLU6 and converts exactly; drop the setting")
        model = relu6_as_relu(model)
    rm.convert(model, fuse_bn=False)


def search_loaders(cfg: DictConfig) -> tuple[DataLoader, DataLoader]:
    """(feature batches, held-out images) from the training set without augmentation, disjoint."""
    a = cfg.amc
    dataset = build_dataset(cfg.data, "train", build_transform(cfg.data, train=False))
    if a.holdout >= len(dataset):
        raise ValueError(f"amc.holdout={a.holdout} leaves no training images for the feature maps: the training "
                         f"set has {len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    batch, workers = a.search_batch_size or per_process_batch(cfg, 1), worker_count(cfg.workers)
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
              device: torch.device, desc: str, budget: Budget, target: float
              ) -> tuple[nn.Module, dict[str, Any], list[dict[str, Any]]]:
    """Search a policy for `model` under `target` (the budget's absolute cost in budget.kind, pruning.job)
    and prune it; returns (pruned model, the policy record, the search's history). The search state in
    `out_dir/search.pt` makes a re-run resume."""
    a = cfg.amc
    graph = graph_of(model, spec)
    cost = graph_cost(graph, model, budget)
    own = cost(graph.full)
    ratio = min(1.0, target / own)   # the environment's fraction of this form's cost
    bar = dict(desc=f"{desc}: feature maps", unit="batch", disable=None if cfg.progress else True)
    features = collect_features(model, graph, loaders[0], int(a.points_per_image), int(cfg.seed), device,
                                progress=lambda it: tqdm(it, **bar))
    model = model.cpu()
    refit = features if a.refit else None

    def score(counts: list[int]) -> float:
        pruned, _ = apply_policy(model, graph, counts, refit)
        return evaluate(pruned.to(device), loaders[1], device, progress=False)[a.reward_metric]

    env = ChannelPruningEnv(graph, score, ratio, float(a.lbound), float(a.rbound),
                            int(a.channel_round), a.reward, cost, UNITS[budget.kind])
    settings = search_settings(a, env.layers, int(cfg.seed))
    identity = {"model": spec.to_dict(), "flops_ratio": ratio, "channels": graph.full,
                "holdout": int(a.holdout), "refit": bool(a.refit), "reward": a.reward, "reward_metric": a.reward_metric,
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
              "reward_metric": a.reward_metric, "holdout_accuracy": result.best["accuracy"],
              "layers": [{"layer": s.producer, "reader": s.reader, "channels": s.channels, "kept": n}
                         for s, n in zip(graph.segments, counts)]}
    with open(os.path.join(out_dir, "policy.json"), "w") as f:
        json.dump(policy, f, indent=2)
    return pruned, policy, result.history


class AMC(Pruner):
    """AMC's DDPG agent searches per-layer keep ratios under the budget on held-out training images;
    the RM form may be fine-tuned once before its search (amc.rm_finetune_epochs)."""
    method, section, schema, forms_key = "amc", "amc", SCHEMA, "methods"
    hint = "raise amc.flops_ratio's budget or lower amc.lbound"
    to_markdown, check_settings, root = staticmethod(to_markdown), staticmethod(check_settings), staticmethod(run_root)

    def checkpoint(self, cfg: DictConfig) -> str:
        return cfg.amc.checkpoint or train_residual(cfg, run_root(cfg), "train")

    def out_dir(self, cfg: DictConfig, base: artifacts.Artifact) -> str:
        a = cfg.amc
        return os.path.join(run_root(cfg), f"r{a.flops_ratio:g}" + ("-own" if a.budget.of == "own" else "")
                            + kind_suffix(a.budget))

    def budget(self, cfg: DictConfig, input_size: int) -> Budget:
        return Budget.from_cfg(cfg.amc.budget, cfg.amc.flops_ratio, input_size)

    def label(self, form: str) -> str:
        return LABELS[form]

    def prepare(self, job: Job) -> tuple[tuple[DataLoader, DataLoader], torch.device]:
        return search_loaders(job.cfg), D.setup(job.cfg.device)

    def start(self, job: Job, form: str) -> artifacts.Artifact:
        """The RM form with BN kept (identity BNs recalibrated, verified; of the ReLU copy with
        amc.relu6=approximate), fine-tuned when amc.rm_finetune_epochs is set; or the residual model."""
        cfg = job.cfg
        if form == "residual":
            return job.base
        plain = rm_form(job)
        if cfg.amc.rm_finetune_epochs == 0:
            return plain
        root = run_root(cfg)
        settings = dataclasses.replace(train_settings(cfg, root, "rm_finetune"), epochs=int(cfg.amc.rm_finetune_epochs))
        stages.train(settings, plain.model, plain.spec)
        tuned = artifacts.load(os.path.join(root, "rm_finetune", "best.pt")).model
        return dataclasses.replace(plain, model=tuned)

    def select(self, job: Job, form: str, start: artifacts.Artifact, form_dir: str, target: float) -> Selection:
        loaders, device = job.state
        pruned, policy, history = amc_prune(job.cfg, start.model, start.spec, form_dir, loaders, device, LABELS[form],
                                            job.budget, target)
        removed = sum(layer["channels"] - layer["kept"] for layer in policy["layers"])
        meta = {"method": form, "flops_ratio": float(job.cfg.amc.flops_ratio), "policy": policy["layers"]}
        return Selection(pruned, removed, meta, {"policy": policy, "history": history})

    def header(self, job: Job) -> dict[str, Any]:
        a = job.cfg.amc
        return {"flops_ratio": float(a.flops_ratio), "checkpoint": job.base.path,
                "search": {k: a[k] for k in ("episodes", "warmup", "holdout", "lbound", "rbound", "channel_round",
                                             "reward", "reward_metric", "refit")}}

    def budget_text(self, job: Job) -> str:
        return job.budget.text()

    def entry(self, job: Job, form: Form) -> dict[str, Any]:
        policy, done = form.selection.extra["policy"], form.done
        kind = job.budget.kind   # no ratio to the form's own cost: the target is a fraction of whose amc.budget.of says
        log.info(f"{LABELS[form.name]}: {amount(form.cost, kind)} (target {amount(form.target, kind)}: "
                 f"{job.budget.text()}), top-1 pruned {done.top1_pruned:.2f}"
                 + (f", fine-tuned {done.top1_finetuned:.2f}" if done.top1_finetuned is not None else ""))
        return {"label": LABELS[form.name], "form": form.start.spec.form, "policy": policy,
                "pruned_artifact": done.pruned_path, "stats": done.stats,
                "conversion": form.start.meta.get("relu6", {"relu6": "exact"}) if form.name == "rm" else None}

    def finish_report(self, job: Job, report: dict[str, Any], forms: dict[str, Form]) -> None:
        histories = {LABELS[name]: form.selection.extra["history"] for name, form in forms.items()}
        report["reward_curves"] = draw_reward_curves(histories, int(job.cfg.amc.warmup),
                                                     os.path.join(job.out, "reward_curves.png"))


def rm_form(job: Job) -> artifacts.Artifact:
    """The RM form of the base model (pruning.job's); with amc.relu6=approximate that of its ReLU copy,
    exact against the copy, and how far it is from the ReLU6 model, measured and logged (meta["relu6"])."""
    cfg = job.cfg
    if cfg.amc.relu6 == "exact":
        return to_prunable_plain(cfg, job.base, cfg.amc.calib_batches)
    relu = dataclasses.replace(job.base, model=relu6_as_relu(job.base.model))
    plain = to_prunable_plain(cfg, relu, cfg.amc.calib_batches)
    error = rm.verify(job.base.model, plain.model, job.size)["float64"]
    approx = {"relu6": "approximate", "max_rel": error["max_rel"], "max_abs": error["max_abs"],
              "top1_relu6": job.reference["top1"], "top1_converted": top1(plain.model, job.val, cfg, "RM (ReLU6 as ReLU)")}
    log.warning(f"amc.relu6=approximate: ReLU6 converted as ReLU (the authors' step 2): the RM form's output differs "
                f"from the ReLU6 model's by {approx['max_rel']:.2e} relative (float64, random input), validation "
                f"top-1 {approx['top1_relu6']:.2f} -> {approx['top1_converted']:.2f}"
                + (f"; fine-tuned for {cfg.amc.rm_finetune_epochs} epochs next" if cfg.amc.rm_finetune_epochs else ""))
    plain.meta["relu6"] = approx
    return plain


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job for one FLOPs ratio; returns the report."""
    return pruning_job.run(cfg, AMC())
