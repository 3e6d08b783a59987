"""Convert a model to a verified plain deploy artifact (`convert.py`), optionally recalibrating the
identity BatchNorms of a keep-BN conversion on training data (paper appendix A.3).

Any file `artifacts.load` reads, or (no checkpoint) a registry model with random weights. The plain
model is made and verified with the `conversion` policy and refused above its tolerance; a state dict
that is plain already (RepVGG's deploy form) is written as it is. With
`recalibrate.batches > 0` (and `conversion=keep_bn`), the BNs that RM added get the statistics of
their input over random training images (`rm.recalibrate_identity_bn`; the data is the file's stored
config, at the trained input size, unless the command line chooses another), and the recalibrated
model is verified again: `train.py model.init=PATH` then fine-tunes it (the a3_finetune_* recipes).
"""
from __future__ import annotations

import functools
import os

from omegaconf import DictConfig
from tqdm import tqdm

import artifacts
from artifacts import ConversionPolicy
from data import calibration_loader
from engine.config import model_kwargs
from engine.faults import probe_output_file
from engine.inputs import check_data, data_for
from models import ModelSpec, model_stems
from models.complexity import count_macs, count_params
from rm import recalibrate_identity_bn
from rm.deploy import input_multiple


def load_source(cfg: DictConfig) -> artifacts.Artifact:
    """The file's model, or the random-weight registry model `model.name`."""
    if cfg.checkpoint:
        return artifacts.load(cfg.checkpoint, name=cfg.model.name, num_classes=cfg.num_classes, stem=cfg.stem,
                              kwargs=model_kwargs(cfg.model), ema=cfg.ema)
    if not cfg.model.name:
        raise ValueError("pass checkpoint=PATH (a training checkpoint or state dict), or model=NAME for random weights")
    spec = ModelSpec(cfg.model.name, int(cfg.num_classes or 1000), cfg.stem or model_stems(cfg.model.name)[0],
                     model_kwargs(cfg.model))
    return artifacts.Artifact("state_dict", spec.build().eval(), spec, {"random_weights": True})


# "Large" for verify_float64=auto: above this many parameters the float64 conversion and check are left out.
# resnet50 (25.6 M) keeps them; resnet101 (44.5 M), resnet152 (60.2 M) and rmnet152x6_32 (107 M) do not: on
# them float64 adds a second conversion and two float64 passes, two thirds of the time (docs: conversion speed).
LARGE_PARAMS = 30e6


def verify_float64(setting, model) -> bool:
    """Whether the convert job checks the conversion in float64 too (`verify_float64`: true, false, auto)."""
    if setting == "auto":
        return count_params(model) <= LARGE_PARAMS
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"verify_float64 must be true, false or auto, got {setting!r}")


def default_output(cfg: DictConfig, spec: ModelSpec) -> str:
    base = os.path.splitext(os.path.basename(cfg.checkpoint))[0] if cfg.checkpoint else f"{spec.name}-random"
    return os.path.join("deploy", f"{base}.pt")


def run(cfg: DictConfig, explicit: set[str] = frozenset()) -> str:
    """Convert, verify (and recalibrate), write; returns the path written. `explicit`: the keys the
    command line set (engine.cli.run_app passes them), whose values win over the file's data settings."""
    source = load_source(cfg)
    out = cfg.out or default_output(cfg, source.spec)
    probe_output_file(out, "out")
    policy = ConversionPolicy.from_cfg(cfg.conversion)
    batches = int(cfg.recalibrate.batches)
    float64 = verify_float64(cfg.verify_float64, source.model)
    # A plain model in a foreign layout (RepVGG's deploy form) is written as a deploy artifact unconverted,
    # so that the benchmark and rm.load_deploy read it like any other.
    foreign_plain = source.kind == "state_dict" and source.spec.form == "plain" and policy.fuse_bn
    if source.spec.form == "plain" and (not policy.fuse_bn or source.spec.conversion.fuse_bn) and not foreign_plain:
        raise ValueError(f"{source.origin} already holds a plain model{' with BatchNorm folded' if policy.fuse_bn else ''}:"
                         f" nothing to convert")
    if batches > 0:
        if policy.fuse_bn or source.spec.form == "plain":
            raise ValueError("recalibrate.batches needs a residual model and conversion=keep_bn: only a keep-BN "
                             "conversion has identity BatchNorms to recalibrate")
        data, warnings = data_for(cfg.get("data"), source.data_config, source.spec.input, explicit, source.origin,
                                  source.spec.input_size)
        for warning in warnings:
            print(f"warning: {warning}")
        check_data(source.spec, data, source.origin)
        plain = artifacts.to_plain(source, policy, verify=False)
        loader = calibration_loader(data, batches, int(cfg.recalibrate.batch_size), cfg.workers)
        bar = functools.partial(tqdm, total=len(loader), desc="BN statistics", unit="batch", disable=not cfg.progress)
        channels = recalibrate_identity_bn(plain.model, loader, progress=bar)
        plain.meta.update(verify=artifacts.check_plain(source, plain.model, policy, int(data.input_size)),
                          recalibrated_channels=channels, recalibration_data=data.name)
        print(f"recalibrated {channels} identity BatchNorm channels on {len(loader)} batches of {data.name}")
    else:
        plain = artifacts.to_plain(source, policy, float64=float64)
    size = source.spec.input_size
    spec = source.spec
    print(f"{spec.label} ({spec.stem} stem, {spec.num_classes} classes, {size}x{size} input"
          f"{'' if spec.input else ', nominal'})")
    for label, model in (("source", source.model), ("plain", plain.model)):
        print(f"  {label:9s} {count_params(model) / 1e6:9.3f} M params  {count_macs(model, size) / 1e9:8.4f} GMACs")
    if foreign_plain:
        print(f"  already plain ({source.meta['layout']} layout): written without conversion")
    for dtype, e in plain.meta.get("verify", {}).items():
        print(f"  {dtype:8s} max abs error {e['max_abs']:.3e}  max rel error {e['max_rel']:.3e}")
    if not float64 and batches == 0 and "verify" in plain.meta:
        why = f"over {LARGE_PARAMS / 1e6:.0f} M parameters" if cfg.verify_float64 == "auto" else "verify_float64=false"
        print(f"  float64  not checked ({why}; verify_float64=true checks it)")
    multiple = input_multiple(plain.model)
    if multiple > 1:
        print(f"  exact only for input H and W multiples of {multiple} (verified at {plain.meta.get('verified_input_size')}"
              f"); the plain model refuses other sizes")
    meta = {k: v for k, v in plain.meta.items() if k not in ("config", "epoch", "step", "best_top1", "random_weights", "layout",
                                                             "dropped")}
    artifacts.save_plain(plain.model, plain.spec, out, **meta)
    print(f"wrote {out}")
    return out
