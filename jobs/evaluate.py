"""Evaluate a checkpoint in its residual and its converted plain form (`evaluate.py`).

Any file `artifacts.load` reads: a training checkpoint (its stored model and data config are used
unless the command line says otherwise), a deploy artifact (plain form only; the trainer's carry their
data config too), a pruned model, or a state dict (bare or wrapped, this project's, torchvision's or
the RMNet/RepVGG authors' layout) named with model=NAME. The model is evaluated at the input size and
normalisation it was trained with unless the command line sets others (engine.inputs). A model/data
mismatch (classes, stem) is an error before any data is read; the plain form is made and verified
with the `conversion` policy. Evaluation is the trainer's exact distributed loop
(`engine.validation.evaluate` over `data.build_loader`'s disjoint shards): under torchrun every
validation image is counted once.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import artifacts
from artifacts import ConversionPolicy
from data import build_loader
from engine import distributed as D
from engine.config import model_kwargs
from engine.environment import environment
from engine.faults import probe_output_file
from engine.inputs import check_data, data_for
from engine.validation import backend_flags, evaluate
from models.mobilenet import exact_forms

SCHEMA = "rmnet-eval/1"
FORMS = ("residual", "plain")


def format_table(results: dict[str, dict[str, float]], conversion: dict | None) -> str:
    lines = [f"{'form':9s} {'top-1':>7s} {'top-5':>7s} {'loss':>8s} {'model img/s':>12s} {'pipeline img/s':>15s} "
             f"{'images':>8s}"]
    for form, r in results.items():
        lines.append(f"{form:9s} {r['top1']:7.2f} {r['top5']:7.2f} {r['loss']:8.4f} {r['img_s']:12.1f} "
                     f"{r['pipeline_img_s']:15.1f} {r['num_samples']:8d}")
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


def run(cfg: DictConfig, explicit: set[str] = frozenset()) -> dict[str, Any] | None:
    """Evaluate `cfg.checkpoint` (conf/evaluate.yaml); every rank runs it, rank 0 reports and
    returns the report (None elsewhere). `explicit`: the keys the command line set (engine.cli.run_app
    passes them), whose values win over the file's trained input size and normalisation."""
    device = D.setup(cfg.device)
    try:
        return _run(cfg, device, explicit)
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
    group = chosen if chosen is not None and "name" in chosen else None
    art = artifacts.load(path, name=cfg.model.name, kwargs=model_kwargs(cfg.model), ema=cfg.ema,
                         num_classes=int(group.num_classes) if group is not None else None,
                         stem=group.stem if group is not None else None)
    data, warnings = data_for(chosen, art.data_config, art.spec.input, explicit, path, art.spec.input_size)
    if D.is_main():
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    check_data(art.spec, data, path)
    forms, inexact = exact_forms(forms, art.model)   # a ReLU6 model has no exact plain form
    warnings += [inexact] if inexact else []
    out = cfg.out or default_output(path, data.name)
    probe_output_file(out, "out")
    nets = {"residual": art if art.spec.form == "residual" else None, "plain": None}
    if "plain" in forms:
        nets["plain"] = artifacts.to_plain(art, ConversionPolicy.from_cfg(cfg.conversion),
                                           input_size=int(data.input_size), verify=D.is_main())
    skipped = [f for f in forms if nets[f] is None]
    forms = [f for f in forms if nets[f] is not None]
    if not forms:
        raise ValueError(f"{path} ({art.kind}) holds a plain model: it has no residual form to evaluate")

    loader = build_loader(data, "val", batch_size=cfg.batch_size, workers=cfg.workers, train=False, device=device)
    results = {}
    for form in forms:
        net = nets[form].model.to(device)
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        # IEEE float32 (cuDNN defaults to TF32 convolutions), so that plain - residual is the conversion's
        # difference alone; cuDNN picks the fastest kernels for the fixed input size.
        with backend_flags("fp32"):
            results[form] = evaluate(net, loader, device, cfg.amp, cfg.channels_last, progress=cfg.progress,
                                     desc=f"eval {form}")
    if not D.is_main():
        return None

    conversion = nets["plain"].meta.get("verify") if nets["plain"] is not None else None
    notes = [f"{f} form not available in a {art.kind} file of a plain model" for f in skipped] + warnings
    if art.kind == "state_dict":
        dropped = art.meta["dropped"]
        notes.insert(0, f"{art.meta['layout']} layout" + (f"; dropped {len(dropped)} statistics-only tensors"
                                                          if dropped else ""))
    report = {
        "schema": SCHEMA, "checkpoint": os.path.abspath(path), "kind": art.kind, "model": art.spec.to_dict(),
        "data": OmegaConf.to_container(data, resolve=True), "split": "val",
        "settings": {"batch_size": cfg.batch_size, "amp": cfg.amp, "channels_last": cfg.channels_last,
                     "ema": cfg.ema, "conversion": OmegaConf.to_container(cfg.conversion),
                     "world_size": D.world_size()},
        "results": results, "conversion_error": conversion, "notes": notes,
        "environment": environment(str(device)),
    }
    print(f"{path}: {art.spec.label}, a {art.kind} file, on {data.name} val at {data.input_size}x{data.input_size}, "
          f"{D.world_size()} process(es)")
    for note in notes:
        print(f"note: {note}")
    print(format_table(results, conversion))
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out}")
    return report
