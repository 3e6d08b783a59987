"""Trainer overhead: img/s of the trainer's training step against a bare forward/backward/step loop.

    .venv/bin/python -m bench.train_overhead                      # resnet50, rmnet50x6_32 on CPU
    .venv/bin/python -m bench.train_overhead --batch 128 --amp bf16 --channels-last   # on a GPU

Both sides train the same model on the same images (synthetic, 224x224, ImageNet stem). The trainer
side is `Trainer.train_epoch` (data loading and augmentation from the in-memory synthetic set,
autocast, GradScaler, per-step LR schedule, hooks, logging, tqdm); the bare side loops over one
pre-made batch: forward, cross-entropy, backward, SGD step. Rounds alternate between the two so load
changes on a shared machine hit both; img/s come from the median step time of each side, and the
overhead is also given from the fastest step of each side (the least disturbed by other load).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from engine import stages
from engine.amp import autocast
from engine.config import check_overrides
from engine.settings import TrainSettings
from engine.trainer import Trainer


def bare_steps(model, images, targets, steps: int, amp: str, device) -> float:
    """Seconds per step of the minimal loop."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(device, amp):
            loss = F.cross_entropy(model(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()
    return (time.perf_counter() - start) / steps


def trainer_steps(trainer: Trainer) -> float:
    trainer.step_in_epoch = 0
    start = time.perf_counter()
    trainer.train_epoch()   # ends with a host sync (the epoch's mean loss)
    return (time.perf_counter() - start) / trainer.steps_per_epoch


def measure(name: str, args, out_dir: str) -> dict:
    steps = args.steps
    cfg = check_overrides([
        f"model={name}", "data=synthetic", "data.stem=imagenet", f"data.input_size={args.size}",
        f"data.train_size={args.batch * (steps + 1)}", f"data.val_size={args.batch}", f"batch_size={args.batch}",
        "workers=0", f"max_steps_per_epoch={steps}", f"amp={args.amp}", f"channels_last={args.channels_last}",
        "sched=constant", "final.enabled=false", f"output_dir={out_dir}", f"run_name={name}",
        f"log_every_steps={steps}"])
    settings = TrainSettings.from_cfg(cfg)
    trainer = Trainer(settings, *stages.build(settings))
    images, targets = next(iter(trainer.train_loader))
    images, targets = images.to(trainer.device), targets.to(trainer.device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    bare_model = copy.deepcopy(trainer.model)
    trainer_steps(trainer)                                                    # warm-up
    bare_steps(bare_model, images, targets, 1, args.amp, trainer.device)
    t_trainer, t_bare = [], []
    for r in range(args.rounds):   # ABBA order, so a drift in machine load hits both sides alike
        runs = [lambda: t_trainer.append(trainer_steps(trainer)),
                lambda: t_bare.append(bare_steps(bare_model, images, targets, steps, args.amp, trainer.device))]
        for run in runs if r % 2 == 0 else runs[::-1]:
            run()
    trainer.close()
    tr, br = statistics.median(t_trainer), statistics.median(t_bare)
    return {"model": name, "batch": args.batch, "input": args.size, "amp": args.amp,
            "channels_last": args.channels_last, "trainer_img_s": args.batch / tr, "bare_img_s": args.batch / br,
            "overhead_pct": 100 * (tr / br - 1), "overhead_best_pct": 100 * (min(t_trainer) / min(t_bare) - 1),
            "trainer_step_s": t_trainer, "bare_step_s": t_bare}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50", "rmnet50x6_32"], help="registered model names")
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8; the paper's GPU batch is 128)")
    p.add_argument("--size", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="alternating trainer/bare rounds (default 3)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--device-label", default=None, help="machine description for the table (default: detected)")
    p.add_argument("--out", default="benchmarks/results/train_overhead_cpu", help="output path without extension")
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, args, tmp) for name in args.models]
    device = args.device_label or (torch.cuda.get_device_name() if torch.cuda.is_available()
                                   else f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})")
    meta = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "date": time.strftime("%Y-%m-%d")}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    lines = [f"# Trainer overhead ({device})", "",
             f"torch {meta['torch']}, {meta['threads']} threads, {meta['date']}; `{meta['command']}`", "",
             "| model | batch | input | amp | trainer img/s | bare loop img/s | overhead (median) | overhead (best) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['input']} | {r['amp']} | {r['trainer_img_s']:.2f} | "
                     f"{r['bare_img_s']:.2f} | {r['overhead_pct']:+.1f}% | {r['overhead_best_pct']:+.1f}% |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
