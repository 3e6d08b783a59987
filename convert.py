"""Convert a residual checkpoint into a plain deploy artifact, verify it, and print its cost.

  python convert.py --checkpoint checkpoints/run/best.pt --out deploy.pt
  python convert.py --model rmnet26x3_32 --stem cifar --num-classes 10 --out demo.pt   # random weights

A training checkpoint of this project carries its model settings; for a bare state dict name the
model with --model/--stem/--num-classes. The deploy artifact loads with `rm.load_deploy` (or
`torch.load(weights_only=True)`) and runs without this project's model classes.
"""
from __future__ import annotations

import argparse
import sys

import torch

import models
import rm
from engine.checkpoint import CheckpointError, extract_state_dict, load_file, model_from_checkpoint
from models.complexity import count_macs, count_params
from models.loading import load_pretrained
from rm.rules import SCHEMES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="training checkpoint or state dict (omit for random weights)")
    p.add_argument("--model", help="registered model name (default: from the checkpoint)")
    p.add_argument("--stem", choices=models.STEMS, help="input stem (default: from the checkpoint)")
    p.add_argument("--num-classes", type=int, help="classifier size (default: from the checkpoint)")
    p.add_argument("--out", required=True, help="path of the deploy artifact to write")
    p.add_argument("--keep-bn", action="store_true", help="keep BatchNorm (for fine-tuning/pruning)")
    p.add_argument("--downsample", choices=SCHEMES,
                   default="reserve_input", help="downsample-block scheme (paper Fig. 2b / 2a)")
    p.add_argument("--tolerance", type=float, default=1e-5,
                   help="largest float32 relative error accepted before refusing to write (default 1e-5)")
    return p


def load_residual(args) -> tuple[torch.nn.Module, dict]:
    cfg: dict = {}
    state = None
    if args.checkpoint:
        blob = load_file(args.checkpoint)
        if isinstance(blob, dict) and isinstance(blob.get("model_cfg"), dict):
            if blob.get("spec") is not None:
                raise CheckpointError(f"{args.checkpoint} already holds a plain model: nothing to convert")
            if args.model is None and args.stem is None and args.num_classes is None:
                # The trainer's own checkpoint: rebuild exactly what it trained (widths and all).
                model = model_from_checkpoint(blob, args.checkpoint)
                return model, model.rmnet_cfg
            cfg = dict(blob["model_cfg"])
        state = extract_state_dict(blob, args.checkpoint)
    for key, value in (("name", args.model), ("stem", args.stem), ("num_classes", args.num_classes)):
        if value is not None:
            cfg[key] = value
    if "name" not in cfg:
        raise CheckpointError("the checkpoint does not say which model it holds: pass --model")
    cfg.setdefault("stem", models.model_stems(cfg["name"])[0])
    cfg.setdefault("num_classes", 1000)
    model = models.create_model(cfg["name"], num_classes=cfg["num_classes"], stem=cfg["stem"])
    if state is not None:
        try:  # also maps the RMNet/RepVGG authors' and torchvision key layouts
            load_pretrained(model, state)
        except CheckpointError as e:
            raise CheckpointError(f"{args.checkpoint} does not match {cfg['name']} (stem={cfg['stem']}, "
                                  f"classes={cfg['num_classes']}): {e}. Pass the --model, --stem and "
                                  f"--num-classes it was trained with") from None
    return model.eval(), model.rmnet_cfg


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model, cfg = load_residual(args)
    except (CheckpointError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = cfg["input_size"]
    kwargs = dict(fuse_bn=not args.keep_bn, downsample=args.downsample)
    plain, errors = rm.convert_verified(model, input_size=size, **kwargs)
    rows = [("residual", model), ("plain", plain)]
    print(f"{cfg['name']} ({cfg['stem']} stem, {cfg['num_classes']} classes, {size}x{size} input)")
    for label, m in rows:
        print(f"  {label:9s} {count_params(m) / 1e6:9.3f} M params  {count_macs(m, size) / 1e9:8.4f} GMACs")
    for dtype, e in errors.items():
        print(f"  {dtype:8s} max abs error {e['max_abs']:.3e}  max rel error {e['max_rel']:.3e}")
    if errors["float32"]["max_rel"] > args.tolerance:
        print(f"error: float32 relative error above {args.tolerance}; nothing written", file=sys.stderr)
        return 1
    rm.save_deploy(plain, args.out, meta={**cfg, "fuse_bn": not args.keep_bn,
                                          "downsample": args.downsample, "verify": errors})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
