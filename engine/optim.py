"""Optimisers and per-iteration learning-rate schedules from the `optim` and `sched` configs."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn


def scaled_lr(cfg: Any, global_batch: int) -> float:
    """`cfg.lr` is the rate for a global batch of `cfg.lr_batch`; it scales linearly (Goyal et al.)."""
    return cfg.lr * global_batch / cfg.lr_batch if cfg.get("lr_batch") else cfg.lr


# Which parameters get no weight decay (unless optim.decay_norm_and_bias), by (name, parameter).
NO_DECAY_RULES: dict[str, Callable[[str, nn.Parameter], bool]] = {
    "ndim": lambda name, p: p.ndim < 2,                        # BN/PReLU parameters and biases (RepVGG recipe)
    "names": lambda name, p: "bias" in name or "bn" in name,   # the RMNet/RepVGG authors' train.py: by name, so
}                                                              # BNs named otherwise (downsample.1) are decayed


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool, own: Sequence[dict] = (),
                 no_decay: str = "ndim", bias_lr_factor: float = 1.0) -> list[dict]:
    """Without `decay_norm_and_bias`, the parameters `NO_DECAY_RULES[no_decay]` picks get no weight
    decay. Parameters named '...bias' train at `bias_lr_factor` x the lr (the group's `lr_factor`,
    which `build_optimizer` resolves; the authors' train.py: 2, "Made no difference"). `own` are
    groups with settings of their own (hooks' `param_groups`, e.g. ResRep's compactors); their
    parameters leave the default groups."""
    skip = _choice(NO_DECAY_RULES, "optim.no_decay", no_decay)
    taken = {id(p) for group in own for p in group["params"]}
    groups: dict[tuple[float, float], list] = {(weight_decay, 1.0): []}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in taken:
            key = (weight_decay if decay_norm_and_bias or not skip(name, p) else 0.0,
                   bias_lr_factor if "bias" in name else 1.0)
            groups.setdefault(key, []).append(p)
    out = [{"params": params, "weight_decay": wd, **({"lr_factor": f} if f != 1.0 else {})}
           for (wd, f), params in groups.items() if params or (wd, f) == (weight_decay, 1.0)]
    return out + [dict(group) for group in own]


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
    build, lr = _choice(OPTIMIZERS, "optim.name", cfg.name), scaled_lr(cfg, global_batch)
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias, own, cfg.get("no_decay", "ndim"),
                          float(cfg.get("bias_lr_factor", 1.0)))
    for group in groups:
        if "lr_factor" in group:
            group["lr"] = lr * group.pop("lr_factor")
    return build(groups, lr, cfg)


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
