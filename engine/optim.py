"""Optimisers and per-iteration learning-rate schedules from the `optim` and `sched` configs."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def scaled_lr(cfg: Any, global_batch: int) -> float:
    """`cfg.lr` is the rate for a global batch of `cfg.lr_batch`; it scales linearly (Goyal et al.)."""
    return cfg.lr * global_batch / cfg.lr_batch if cfg.get("lr_batch") else cfg.lr


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Without `decay_norm_and_bias`, BatchNorm/PReLU parameters and biases (every tensor of < 2
    dimensions) get no weight decay, as in the RepVGG recipe."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if decay_norm_and_bias or p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: Any, global_batch: int) -> torch.optim.Optimizer:
    lr = scaled_lr(cfg, global_batch)
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {cfg.name!r}")


def lr_factor(cfg: Any, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based); schedules move every step."""
    warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    if cfg.name == "cosine":
        total = max(epochs * steps_per_epoch - warmup, 1)
        t = min((step - warmup) / total, 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"sched.name must be one of {SCHEDULES}, got {cfg.name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per optimizer step; its state_dict (last_epoch = steps done) resumes it."""
    lr_factor(cfg, 0, steps_per_epoch, epochs)   # reject a bad config now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs))
