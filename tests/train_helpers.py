"""Shared pieces of the trainer tests: a tiny, fast training config."""
from __future__ import annotations

from engine.config import check_overrides

# resnet18 at widths 8..32 on 16x16 synthetic images: a few ms per step on one CPU core.
TINY = ["model=resnet18", "model.kwargs.widths=[8,8,16,16]", "data=synthetic", "data.input_size=16",
        "data.train_size=256", "data.val_size=101", "batch_size=16", "workers=0", "progress=false",
        "sched=constant", "optim.lr=0.05", "optim.lr_batch=null", "log_every_steps=1"]


def tiny_config(tmp_path, *overrides: str):
    return check_overrides([*TINY, f"output_dir={tmp_path}", *overrides])
