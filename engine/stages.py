"""The stages of a training job, which pass artifacts: build -> train -> convert + verify -> evaluate.

`jobs.train.run(cfg)` is train.py: it reads the config into `TrainSettings` once, `build` makes the
model they describe (a registry model, or
the model of any file `model.init` names, optionally converted to its plain form), `Trainer` trains
it, and `finish` converts the best checkpoint with the conversion policy, evaluates both forms on
the validation set and writes `deploy.pt` and `final.json`. The pruners call `build`, `train` and
`finish` themselves with the models they make.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig

import artifacts
import data as datasets
from artifacts import ConversionPolicy
from models import InputSpec, ModelSpec, model_stems
from models.mobilenet import has_relu6

from . import distributed as D
from .config import init_path, per_process_batch
from .inputs import check_data
from .settings import TrainSettings
from .trainer import Trainer
from .validation import evaluate

log = logging.getLogger("rmnet.train")


def build(settings: TrainSettings) -> tuple[nn.Module, ModelSpec]:
    """The model a run starts from (training mode) and its spec, trained on `settings.data`: the registry
    model `model.name`, or the model of the file `model.init` names (a checkpoint, deploy artifact or
    state dict, through `artifacts.load`); `model.convert` (keep_bn | fuse_bn) then trains its plain
    form, converted and verified with the `conversion` settings."""
    data = settings.data
    trained = InputSpec.from_data(data)
    torch.manual_seed(settings.seed)   # identical initial weights on every rank
    init = settings.model.init
    if init:
        path = init_path(init)
        art = artifacts.load(path, name=settings.model.name, num_classes=int(data.num_classes), stem=data.stem,
                             kwargs=settings.model.kwargs)
        check_data(art.spec, data, f"model.init={path}")
    else:
        stems = model_stems(settings.model.name)
        if data.stem not in stems:
            raise ValueError(f"{settings.model.name} has no {data.stem!r} stem (data={data.name} needs it); it exists "
                             f"with: {', '.join(stems)}")
        spec = ModelSpec(settings.model.name, int(data.num_classes), data.stem, dict(settings.model.kwargs))
        art = artifacts.Artifact("train", spec.build(), spec)
    mode = settings.model.convert
    if mode is not None:
        policy = replace(ConversionPolicy.from_cfg(settings.conversion), fuse_bn=mode == "fuse_bn")
        shape_only = any(p.is_meta for p in art.model.parameters())   # a meta-device build has no values to verify
        art = artifacts.to_plain(replace(art, model=art.model.eval(), spec=replace(art.spec, input=trained)), policy,
                                 verify=not shape_only)
    return art.model.train(), replace(art.spec, input=trained)


def train(settings: TrainSettings, model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """Train `model` (every rank passes the same) with the trainer; returns its summary (best top-1,
    run directory), and with `settings.final` also `finish`'s."""
    if settings.final and spec.form == "residual" and has_relu6(model):   # refused now, not after training
        raise ValueError(f"{spec.name} has ReLU6: the final step's exact RM conversion refuses it; pass "
                         f"final.enabled=false (amc.py converts it approximately: amc.relu6=approximate)")
    trainer = Trainer(settings, model, spec)
    done = False
    try:
        summary = trainer.fit()
        if settings.final:
            summary.update(finish(settings, trainer.run_dir, trainer.val_loader, trainer.device))
        done = True
        return summary
    finally:
        trainer.close(failed=not done)


def finish(settings: TrainSettings, run_dir: str, val_loader: Any, device: torch.device) -> dict[str, Any]:
    """Convert the run's best.pt (its EMA weights when trained with EMA) with the conversion policy,
    evaluate both forms, write deploy.pt (only when the conversion is within tolerance) and final.json.
    A run finished before (deploy.pt newer than best.pt) is reported, not converted again."""
    D.barrier()
    best, deploy, final = (os.path.join(run_dir, f) for f in ("best.pt", "deploy.pt", "final.json"))
    if os.path.isfile(final) and os.path.isfile(deploy) and os.path.getmtime(deploy) >= os.path.getmtime(best):
        log.info(f"the run is finished: {deploy} and {final} are from its best.pt; nothing to do")
        with open(final) as f:
            return json.load(f)
    residual = artifacts.load(best, ema=settings.ema_decay > 0)
    policy = ConversionPolicy.from_cfg(settings.conversion)
    plain = artifacts.to_plain(residual, policy, verify=D.is_main())
    results = {}
    for label, art in (("residual", residual), ("plain", plain)):
        net = art.model.to(device)
        if settings.channels_last:
            net = net.to(memory_format=torch.channels_last)
        results[label] = evaluate(net, val_loader, device, settings.amp, settings.channels_last, progress=settings.progress,
                                  desc=f"final {label}")
    summary = {"residual": results["residual"], "plain": results["plain"],
               "conversion_error": plain.meta.get("verify"), "checkpoint": best}
    if D.is_main():
        errors = plain.meta["verify"]
        for label, r in results.items():
            skipped = f", {r['skipped']} undecodable skipped" if r.get("skipped") else ""
            log.info(f"final {label:8s} top-1 {r['top1']:.2f}  top-5 {r['top5']:.2f}  loss {r['loss']:.4f}  "
                     f"({r['num_samples']} images{skipped}, {r['img_s']:.0f} img/s)")
        log.info(f"conversion error: float32 max rel {errors['float32']['max_rel']:.2e}, float64 max rel "
                 f"{errors['float64']['max_rel']:.2e}; top-1 difference "
                 f"{results['plain']['top1'] - results['residual']['top1']:+.2f}")
        artifacts.save_plain(plain.model, plain.spec, deploy, verify=errors,
                              data_config=settings.to_dict()["data"],
                              top1_residual=results["residual"]["top1"], top1_plain=results["plain"]["top1"])
        summary["deploy"] = deploy
        log.info(f"wrote {deploy}")
        with open(final, "w") as f:
            json.dump(summary, f, indent=2)
    D.barrier()
    return summary


def build_val_loader(cfg: DictConfig | TrainSettings) -> Any:
    return datasets.build_loader(cfg.data, "val", per_process_batch(cfg, D.world_size()), cfg.workers)
