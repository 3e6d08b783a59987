#!/usr/bin/env python
"""Prepare a trained residual model for fine-tuning in plain form with BatchNorm (paper A.3).

Converts the checkpoint with `fuse_bn=False`, sets the statistics of the identity BatchNorms the
conversion adds from a pass over the training split (rm.recalibrate, paper eq. 2), checks that
the plain model still computes what the residual one does, and writes a deploy artifact to
fine-tune with `train.py model.init=deploy:PATH` (see the a3_finetune_* experiments).

    .venv/bin/python scripts/recalibrate_bn.py --checkpoint checkpoints/a3_resnet18_cifar10_pretrain/best.pt \\
        --data cifar10 --out checkpoints/a3_resnet18_cifar10_bn.pt
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from anywhere without installing

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

import rm  # noqa: E402
from data import build_dataset, build_transform, worker_count  # noqa: E402
from engine.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from rm.recalibrate import recalibrate_identity_bn  # noqa: E402

DATA_DIR = os.path.join(ROOT, "conf", "data")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint (best.pt / last.pt) of a residual model")
    p.add_argument("--data", required=True, help="data config name in conf/data/ (e.g. cifar10, imagenet)")
    p.add_argument("--data-root", help="dataset directory (default: the data config's root)")
    p.add_argument("--out", required=True, help="path of the deploy artifact to write")
    p.add_argument("--batches", type=int, default=200, help="training batches to measure (default 200)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--workers", type=int, help="loader workers (default: CPUs - 1, at most 8)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest float32 relative output error accepted before refusing to write (default 1e-4)")
    return p.parse_args(argv)


def load_data_config(name: str, root: str | None):
    path = os.path.join(DATA_DIR, f"{name}.yaml")
    if not os.path.isfile(path):
        options = sorted(f[:-5] for f in os.listdir(DATA_DIR) if f.endswith(".yaml"))
        raise SystemExit(f"error: no data config {name!r}; choose one of {', '.join(options)}")
    cfg = OmegaConf.load(path)
    if root is not None:
        cfg.root = root
    return cfg


def calibration_loader(data_cfg, batches: int, batch_size: int, workers: int | None) -> DataLoader:
    """Random training images without augmentation: the data the model will fine-tune on. Sampled
    at random because class-folder datasets (ImageNet) are stored class by class."""
    dataset = build_dataset(data_cfg, "train", build_transform(data_cfg, train=False))
    sampler = RandomSampler(dataset, num_samples=min(batches * batch_size, len(dataset)),
                            generator=torch.Generator().manual_seed(0))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=worker_count(workers))


def main(argv=None) -> int:
    args = parse_args(argv)
    data_cfg = load_data_config(args.data, args.data_root)
    residual = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint, ema=args.ema)
    cfg = dict(residual.rmnet_cfg)
    if cfg.get("plain"):
        raise SystemExit(f"error: {args.checkpoint} already holds a plain model; pass the residual model's checkpoint")
    if (cfg["num_classes"], cfg["stem"]) != (data_cfg.num_classes, data_cfg.stem):
        raise SystemExit(f"error: the checkpoint's model has {cfg['num_classes']} classes and the {cfg['stem']} stem; "
                         f"data {args.data!r} needs {data_cfg.num_classes} and {data_cfg.stem}")

    plain = rm.convert(residual, fuse_bn=False)
    loader = calibration_loader(data_cfg, args.batches, args.batch_size, args.workers)
    channels = recalibrate_identity_bn(plain, loader)
    error = rm.verify(residual, plain, data_cfg.input_size)
    print(f"recalibrated {channels} identity BatchNorm channels on {len(loader)} batches; "
          f"output error vs the residual model: {error}")
    if error["float32"]["max_rel"] > args.tolerance:
        print(f"error: relative error {error['float32']['max_rel']:.2e} exceeds --tolerance {args.tolerance:.0e}; "
              "nothing written", file=sys.stderr)
        return 1
    rm.save_deploy(plain, args.out, meta={**cfg, "fuse_bn": False, "recalibrated_channels": channels,
                                          "recalibration_data": args.data, "verify": error})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
