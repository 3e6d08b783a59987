"""Evaluation loop with exact distributed counting.

Each rank evaluates its share of the loader (an `EvalSampler` gives disjoint shares that cover the
dataset once, without DistributedSampler's padding duplicates); sums of loss, top-1/top-5 hits and
sample counts are all-reduced, so the result is the exact single-process figure.
"""
from __future__ import annotations

import time
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed as D
from .amp import autocast


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None, amp: str = "none",
             channels_last: bool = False, progress: bool = True, desc: str = "eval") -> dict[str, float]:
    """Top-1/top-5 accuracy (%), mean cross-entropy, global sample count, img/s of `model` on `loader`,
    and `skipped`: the samples the loader's sampler holds that never arrived (images left out as
    undecodable, `data.bad_images=skip`); they count neither as hits nor as samples.

    Runs in eval mode and restores the model's previous mode. Collective when a process group is
    initialised: every rank must call it. A loader may yield None for a batch whose images were all skipped.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)   # loss, top-1 hits, top-5 hits, samples, expected
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "__len__"):
        sums[4] = len(sampler)
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not (progress and D.is_main())):
        if batch is None:
            continue
        images, targets = batch
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
        sums[:4] += torch.stack([F.cross_entropy(logits, targets, reduction="sum").double(),
                                 hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                                 torch.tensor(float(len(targets)), dtype=torch.float64, device=device)])
    D.all_reduce_sum(sums)   # also waits for the slowest rank, so the time below is the global one
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    loss, top1, top5, n, expected = sums.tolist()
    if n == 0:
        raise ValueError("evaluate() got an empty loader: the validation set has no samples")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "num_samples": int(n),
            "skipped": max(int(expected - n), 0), "img_s": n / elapsed}
