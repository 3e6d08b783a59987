"""Optimisers and per-iteration learning-rate schedules from the `optim` and `sched` configs."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn


def scaled_lr(cfg: Any, global_batch: int) -> float:
    """`cfg.lr` is the rate for a global batch of `cfg.lr_batch`; it scales linearly (Goyal et al.)."""
    return cfg.lr * global_batch / cfg.lr_batch if cfg.get("lr_batch") else cfg.lr


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                 own: Sequence[dict] = ()) -> list[dict]:
    """Without `decay_norm_and_bias`, BatchNorm/PReLU parameters and biases (every tensor of < 2
    dimensions) get no weight decay, as in the RepVGG recipe. `own` are groups with settings of their
    own (hooks' `param_groups`, e.g. ResRep's compactors); their parameters leave the default groups."""
    taken = {id(p) for group in own for p in group["params"]}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in taken:
            (decay if decay_norm_and_bias or p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups + [dict(group) for group in own]


OPTIMIZERS: dict[str, Callable[[list[dict], float, Any], torch.optim.Optimizer]] = {
    "sgd": lambda groups, lr, cfg: torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov),
    "adamw": lambda groups, lr, cfg: torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas)),
}


def _cosine(cfg: Any, t: float) -> float:
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


# Learning-rate factor after warm-up, by (config, fraction of the post-warm-up steps done, epochs done).
SCHEDULES: dict[str, Callable[[Any, float, float], float]] = {
    "constant": lambda cfg, t, epoch: 1.0,
    "step": lambda cfg, t, epoch: cfg.gamma ** int(epoch // cfg.step_epochs),
    "cosine": lambda cfg, t, epoch: _cosine(cfg, t),
}


def _choice(table: dict, key: str, value: str):
    if value not in table:
        raise ValueError(f"{key} must be one of {', '.join(table)}, got {value!r}")
    return table[value]


def build_optimizer(model: nn.Module, cfg: Any, global_batch: int, own: Sequence[dict] = ()) -> torch.optim.Optimizer:
    build = _choice(OPTIMIZERS, "optim.name", cfg.name)
    return build(param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias, own), scaled_lr(cfg, global_batch),
                 cfg)


def lr_factor(cfg: Any, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based); schedules move every step, or
    once per epoch with `per_epoch`."""
    schedule = _choice(SCHEDULES, "sched.name", cfg.name)
    warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.get("per_epoch", False):   # each epoch at its first step's rate (AMC's amc_train.py)
        step = max(warmup, step // steps_per_epoch * steps_per_epoch)
    t = min((step - warmup) / max(epochs * steps_per_epoch - warmup, 1), 1.0)
    return schedule(cfg, t, step / steps_per_epoch)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per optimizer step; its state_dict (last_epoch = steps done) resumes it."""
    lr_factor(cfg, 0, steps_per_epoch, epochs)   # reject a bad config now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs))
