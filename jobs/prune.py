"""The network-slimming pruner (`prune.py`; the job is `pruning.job.run`): sparse training -> RM
conversion -> pruning -> fine-tuning -> report.

    <output_dir>/prune-<model>-<data>-sr<sr>/sparse/            sparse-training run (shared by criteria)
    <output_dir>/prune-<model>-<data>-sr<sr>/<criterion>/       per threshold or ratio:
        rm/pruned.pt  rm/finetune/   residual/pruned.pt  residual/finetune/   report.json  report.md

Both forms start from the same sparse-trained residual model (identity shortcuts with a BN, paper
§3.4: `model.kwargs.shortcut_bn=true`; or, `prune.penalty=mask_conv`, the authors' mask-conv network
`models.rmnet_pruning`, whose masks rank the channels and which prunes through RM alone): `rm`
converts it with the `conversion` policy (BN kept, `reserve_shortcut`), sets the identity BNs' statistics from training data (so reserved and merged
channels are ranked by their real scale), verifies the result and prunes the plain chain; `residual`
prunes the residual model, where channels tied by additions go only together. Every model is read
and written through `artifacts`, and trained by the stages of train.py (`engine.stages`).
"""
from __future__ import annotations

import copy
import functools
import logging
import os
from typing import Any

from omegaconf import DictConfig, open_dict

import artifacts
from engine import stages
from engine.inputs import check_data, data_for
from models import model_family
from models.rmnet_pruning import plain_channel_masks
from pruning import common
from pruning import job as pruning_job
from pruning.budget import Budget, check_budget, search
from pruning.common import finetune, save_model, shape_only_model, top1, train_residual
from pruning.job import Form, Job, Pruner, Selection
from pruning.penalty import PENALTIES, hooks, trained_penalty
from pruning.plain import channel_scores, prune_plain
from pruning.report import SCHEMA, check_bench, device_line, model_stats, to_markdown
from pruning.residual import check_residual, prune_residual, residual_scores
from pruning.surgery import PruneError

log = logging.getLogger("rmnet.prune")


def criterion(p: Any) -> str:
    """The run's folder and label: budget (<kind><keep>-<of>), else ratio<ratio> | thr<threshold>."""
    if p.budget.keep is not None:
        return f"{p.budget.kind}{p.budget.keep:g}-{p.budget.of}"
    return f"ratio{p.ratio:g}" if p.ratio is not None else f"thr{p.threshold:g}"


def step_threshold(p: Any) -> float | None:
    """The threshold sparse training applies every step (prune.threshold_every_step), else None."""
    return float(p.threshold) if p.threshold_every_step else None


def run_root(cfg: DictConfig, penalty: dict | None | str = "run") -> str:
    """The run's folder, named after the penalty its model was trained with (this run's by default,
    None for a checkpoint that was not sparse-trained): sr<sr>, and -step<threshold> when the
    threshold was applied every step (the sparse model then depends on it)."""
    if penalty == "run":
        penalty = {"sr": cfg.prune.sr, "threshold": step_threshold(cfg.prune)}
    name = f"prune-{cfg.model.name}-{cfg.data.name}-"
    if penalty is None:
        return common.run_root(cfg, "prune", name + "not-sparse")
    step = f"-step{penalty['threshold']:g}" if penalty["threshold"] is not None else ""
    return common.run_root(cfg, "prune", f"{name}sr{penalty['sr']:g}{step}")


def trained_sr(art: artifacts.Artifact) -> float | None:
    """The sparsity factor (hooks.bn_l1.sr or hooks.scale_l1.sr) a training checkpoint was trained
    with; None if none."""
    penalty = trained_penalty(art.meta.get("config") or {})
    return penalty["sr"] if penalty else None


def check_settings(cfg: DictConfig) -> None:
    """The pruning settings, before any training starts."""
    p = cfg.prune
    if p.ratio is None and p.threshold is None:
        raise ValueError("set prune.threshold or prune.ratio")
    if p.ratio is not None and not 0 <= p.ratio < 1:
        raise ValueError(f"prune.ratio must be in [0, 1), got {p.ratio}")
    if p.ratio is None and not p.threshold > 0:
        raise ValueError(f"prune.threshold must be positive, got {p.threshold}")
    forms = common.check_forms(cfg, "prune")
    check_budget(p.budget, "prune")
    check_bench(p.bench)
    if p.budget.keep is not None and not 0 < p.budget.keep <= 1:
        raise ValueError(f"prune.budget.keep is the fraction of the cost to keep, in (0, 1]; got {p.budget.keep}")
    common.check_channel_round(p, "prune")
    if cfg.conversion.fuse_bn:
        raise ValueError("pruning ranks channels by BatchNorm scale: use conversion=keep_bn (the default of prune.py)")
    check_penalty(cfg, forms)
    common.check_files(p, "prune", ("sparse_ckpt", "eval", "finetune"))
    if "residual" in forms and not (p.eval or p.finetune):
        try:
            check_residual(shape_only_model(cfg))
        except PruneError as e:
            raise PruneError(f"prune.forms has residual, but model={cfg.model.name}: {e}; prune it through RM "
                             f"alone: prune.forms=[rm]") from None


def check_penalty(cfg: DictConfig, forms: list[str]) -> None:
    """mask_conv needs the mask-conv model, pruned through RM with reserve_input (whose reserved
    channels are the masked shortcut inputs); bn_scale needs BN-scaled channels, which that model
    replaces by masks."""
    p = cfg.prune
    if p.penalty not in PENALTIES:
        raise ValueError(f"prune.penalty must be one of {', '.join(PENALTIES)}, got {p.penalty!r}")
    if p.threshold_every_step and p.threshold is None:
        raise ValueError("prune.threshold_every_step zeroes the scales under prune.threshold while training: set it")
    masked = model_family(cfg.model.name) == "rmnet_pruning"
    if (p.penalty == "mask_conv") != masked:
        raise ValueError(f"prune.penalty={p.penalty} with model={cfg.model.name}: mask_conv penalises the mask convs "
                         f"of rmnet_pruning_18/34, bn_scale the BN scales of any other model")
    if masked and cfg.conversion.downsample != "reserve_input":
        raise ValueError("prune.penalty=mask_conv ranks the reserved channels by their shortcut masks, which "
                         "conversion.downsample=reserve_input reserves (as the authors' deploy does)")
    if masked and "residual" in forms:
        raise ValueError("prune.penalty=mask_conv prunes through RM alone (the authors' method): prune.forms=[rm]")


class Slimming(Pruner):
    """Network slimming: BN scales of a sparse-trained model rank the channels; a threshold or ratio
    selects them, or the budget (the highest threshold whose model fits it)."""
    method, section, schema = "slimming", "prune", SCHEMA
    hint = "raise prune.threshold (or set prune.ratio), or sparse-train with a larger prune.sr"
    to_markdown, check_settings, root = staticmethod(to_markdown), staticmethod(check_settings), staticmethod(run_root)

    def checkpoint(self, cfg: DictConfig) -> str:
        """prune.sparse_ckpt, else sparse training: shortcut BNs and the bn_l1 penalty on BN scales, or the
        penalty on the mask convs (prune.penalty), thresholded every step or not (prune.threshold_every_step)."""
        p = cfg.prune
        if p.sparse_ckpt:
            return p.sparse_ckpt
        kwargs = {"shortcut_bn": True} if p.penalty == "bn_scale" else {}
        return train_residual(cfg, run_root(cfg), "sparse", hooks(p.penalty, float(p.sr), step_threshold(p)),
                              model_kwargs=kwargs)

    def base_model(self, cfg: DictConfig) -> artifacts.Artifact:
        residual = super().base_model(cfg)
        if trained_sr(residual) is None:
            log.warning(f"warning: {residual.path} was not sparse-trained (no hooks.bn_l1 or scale_l1): its scales "
                        "need not rank channels; leave prune.sparse_ckpt=null to sparse-train first")
        return residual

    def out_dir(self, cfg: DictConfig, base: artifacts.Artifact) -> str:
        return os.path.join(run_root(cfg, trained_penalty(base.meta.get("config") or {})), criterion(cfg.prune))

    def budget(self, cfg: DictConfig, input_size: int) -> Budget | None:
        b = cfg.prune.budget
        return Budget.from_cfg(b, b.keep, input_size) if b.keep is not None else None

    def select(self, job: Job, form: str, start: artifacts.Artifact, form_dir: str,
               target: float | None) -> Selection:
        """Threshold/ratio, or under the budget the lowest threshold whose model costs at most `target`."""
        p = job.cfg.prune
        scores_of, prune_fn = (residual_scores, prune_residual) if form == "residual" else (channel_scores, prune_plain)
        cut = functools.partial(prune_fn, start.model, channel_round=int(p.channel_round))
        if p.penalty == "mask_conv":   # the masks of the residual model, in the plain chain's order
            masks = plain_channel_masks(job.base.model)
            scores_of, cut = (lambda model: masks), functools.partial(cut, scores=masks)
        if job.budget is None:
            result = cut(**({"ratio": float(p.ratio)} if p.ratio is not None else {"threshold": float(p.threshold)}))
        else:
            result, _ = search(lambda t: cut(threshold=t), job.budget.cost, scores_of(start.model), target)
        return Selection(result.model, result.removed, {"sr": trained_sr(job.base), "threshold": result.threshold},
                         {"result": result})

    def header(self, job: Job) -> dict[str, Any]:
        p, ckpt, sr = job.cfg.prune, job.base.path, trained_sr(job.base)
        return {"sr": sr, "penalty": trained_penalty(job.base.meta.get("config") or {}),
                "threshold": None if p.threshold is None else float(p.threshold),
                "ratio": None if p.ratio is None else float(p.ratio), "criterion": criterion(p),
                "sparse_checkpoint": ckpt, "sparse_trained": sr is not None, "channel_round": int(p.channel_round),
                "budget_text": self.budget_text(job)}

    def budget_text(self, job: Job) -> str:
        return job.budget.text() if job.budget is not None else criterion(job.cfg.prune)

    def entry(self, job: Job, form: Form) -> dict[str, Any]:
        result, before, after = form.selection.extra["result"], form.before, form.done.stats
        entry = {"threshold": result.threshold, "before": before, "after": after,
                 "pruned_param_ratio": 1 - after["params"] / before["params"],
                 "params_vs_reference": after["params"] / job.reference["params"],
                 "speedup": after["img_s"] / job.reference["img_s"], "top1_pruned": form.done.top1_pruned,
                 "top1_finetuned": form.done.top1_finetuned, "channels_removed": result.removed,
                 "channels_total": result.total, "approximate_channels": result.approximate,
                 "layers": result.layers, "artifact": form.done.pruned_path, "flag": form.flag,
                 "target": form.target, "cost": form.cost}
        log.info(f"{form.name}: {result.removed}/{result.total} channels removed, params {after['params']:,} "
                 f"({100 * entry['pruned_param_ratio']:.1f}% pruned), top-1 pruned {form.done.top1_pruned:.2f}")
        return entry


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job for one sr and one threshold/ratio/budget; returns the report."""
    return pruning_job.run(cfg, Slimming())


def form_of(art: artifacts.Artifact) -> str:
    return "rm" if art.spec.form == "plain" else "residual"


def with_file_data(cfg: DictConfig, art: artifacts.Artifact, explicit: set[str]) -> DictConfig:
    """`cfg` with the data a model file is measured on: the data config it stores, at its trained input
    (as evaluate.py reads it), unless the command line sets data= or data.* itself."""
    if art.data_config is None or any(k.split(".")[0] == "data" for k in explicit):
        check_data(art.spec, cfg.data, art.origin)
        return cfg
    data, _ = data_for(None, art.data_config, art.spec.input, explicit, art.origin)
    check_data(art.spec, data, art.origin)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.data = data
    return cfg


def evaluate_file(cfg: DictConfig, path: str, explicit: set[str] = frozenset()) -> dict[str, Any]:
    """`prune.eval=PATH`: top-1, params, MACs and img/s of one model file (on the data it stores, at its
    trained input size)."""
    check_settings(cfg)
    art = artifacts.load(path)
    cfg = with_file_data(cfg, art, explicit)
    stats = {**model_stats(art.model, int(cfg.data.input_size), cfg.prune.bench),
             "top1": top1(art.model, stages.build_val_loader(cfg), cfg, "eval"), "form": form_of(art),
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
    cfg = with_file_data(cfg, art, explicit)
    tuned = finetune(cfg, art.model, art.spec, out_dir, "prune")
    tuned_path = os.path.join(out_dir, "finetuned.pt")
    meta = {k: v for k, v in art.meta.items() if k not in ("config", "data_config")}
    save_model(tuned, art.spec, tuned_path, cfg.data, **{**meta, "form": form_of(art)})
    return evaluate_file(cfg, tuned_path, explicit)
