"""The sparsity penalty of network slimming's training (`prune.penalty`, `prune.threshold_every_step`).

`bn_scale` (the paper, §3.4): L1 on the BN scales, the trainer's `bn_l1` hook. `mask_conv` (the
authors' train_pruning.py): L1 on the depthwise 1x1 mask convs of `models.rmnet_pruning` instead.
With a threshold, every step does what their `update_mask` does between backward and the optimizer
step: add sr x sign(s) to each scale's gradient, then zero the scales with |s| <= threshold and
their gradients. The step itself can move a zeroed scale off zero again (SGD's momentum buffer still
holds its earlier gradients; its weight decay is 0 at s = 0), and the next step zeroes it again
while it stays under the threshold; a buffer that gets no new gradient decays by the momentum
factor each step, so a scale zeroed for good ends exactly 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from engine.hooks import BNL1
from models.rmnet_pruning import ChannelMask

PENALTIES = ("bn_scale", "mask_conv")


class ScaleL1(BNL1):
    """L1 factor `sr` on the `on` scales (bn_scale | mask_conv); with `threshold`, the scales under it
    are zeroed every step (see the module doc)."""

    def __init__(self, sr: float = 1e-4, on: str = "bn_scale", threshold: float | None = None):
        super().__init__(sr)
        if on not in PENALTIES:
            raise ValueError(f"the penalised scales must be one of {', '.join(PENALTIES)}, got {on!r}")
        if threshold is not None and threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.on, self.threshold = on, threshold

    def scales(self, model: nn.Module) -> list[nn.Parameter]:
        if self.on == "bn_scale":
            return super().scales(model)
        return [m.weight for m in model.modules() if isinstance(m, ChannelMask) and m.weight.grad is not None]

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        super().after_backward(model)
        if self.threshold is None:
            return
        for w in self.scales(model):
            keep = w.abs() > self.threshold
            w.grad.mul_(keep)
            w.mul_(keep)


def hooks(penalty: str, sr: float, threshold: float | None) -> dict:
    """The trainer's `hooks` entry of sparse training: today's `bn_l1` for the paper's variant without
    a per-step threshold, else `ScaleL1` by import path (`threshold` None: no per-step threshold)."""
    if penalty == "bn_scale" and threshold is None:
        return {"bn_l1": {"sr": sr}}
    return {"scale_l1": {"_target_": f"{__name__}.ScaleL1", "sr": sr, "on": penalty, "threshold": threshold}}


def trained_penalty(config: dict) -> dict | None:
    """{sr, on, threshold} of the penalty a training run's config used; None if it had none."""
    found = config.get("hooks") or {}
    if found.get("bn_l1"):
        return {"sr": float(found["bn_l1"]["sr"]), "on": "bn_scale", "threshold": None}
    if found.get("scale_l1"):
        s = found["scale_l1"]
        return {"sr": float(s["sr"]), "on": s.get("on", "bn_scale"), "threshold": s.get("threshold")}
    return None
