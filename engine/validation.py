"""Evaluation loop with exact distributed counting.

Each rank evaluates its share of the loader (an `EvalSampler` gives disjoint shares that cover the
dataset once, without DistributedSampler's padding duplicates); sums of loss, top-1/top-5 hits and
sample counts are all-reduced, so the result is the exact single-process figure. Nothing in the loop
waits for the device: the sums stay on it, the sample count is a host integer (its batch sizes), and
the model is timed with CUDA events read once at the end.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed as D
from .amp import autocast


@contextmanager
def backend_flags(precision: str) -> Iterator[None]:
    """cudnn.benchmark on; TF32 only for precision=tf32 (fp32 means IEEE float32 convolutions,
    which PyTorch's cuDNN default of TF32 would otherwise silently replace). Restored on exit."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = torch.backends.cudnn.benchmark, conv.fp32_precision, matmul.fp32_precision
    torch.backends.cudnn.benchmark = True
    conv.fp32_precision = matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, conv.fp32_precision, matmul.fp32_precision = saved


class ModelClock:
    """Seconds spent in the model, apart from data loading: CUDA events around each forward on a GPU
    (read after the final synchronize, so no batch waits for them), the wall clock elsewhere, where a
    forward returns when it is done."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.seconds = 0.0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)   # the stream the forward runs on
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            yield
            end.record(stream)
            self.events.append((start, end))
        else:
            tick = time.perf_counter()
            yield
            self.seconds += time.perf_counter() - tick

    def total(self) -> float:
        """The time so far; on a GPU call it after torch.cuda.synchronize()."""
        return self.seconds + sum(start.elapsed_time(end) for start, end in self.events) / 1000


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None, amp: str = "none",
             channels_last: bool = False, progress: bool = True, desc: str = "eval") -> dict[str, float]:
    """Top-1/top-5 accuracy (%), mean cross-entropy, global sample count, `img_s` (images per second of
    the model alone), `pipeline_img_s` (images per second from the loader's start, worker start-up and
    loading included) of `model` on `loader`, and `skipped`: the samples the loader's sampler holds that
    never arrived (images left out as undecodable, `data.bad_images=skip`); they count neither as hits
    nor as samples.

    Runs in eval mode and restores the model's previous mode. Collective when a process group is
    initialised: every rank must call it. A loader may yield None for a batch whose images were all skipped.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits_loss = torch.zeros(3, dtype=torch.float64, device=device)   # loss, top-1 hits, top-5 hits
    sampler = getattr(loader, "sampler", None)
    expected = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else 0
    samples, clock = 0, ModelClock(device)
    start = time.perf_counter()
    # disable=None: tqdm's own rule, no bar when the output is not a terminal (a redirected log would get a
    # line per refresh); the same for every bar of the project
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if progress and D.is_main() else True):
        if batch is None:
            continue
        images, targets = batch
        samples += len(targets)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with clock(), autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
        hits_loss += torch.stack([F.cross_entropy(logits, targets, reduction="sum").double(),
                                  hits[:, 0].sum().double(), hits.any(dim=1).sum().double()])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # One host-to-device copy for the host values, one all-reduce, which also waits for the slowest rank,
    # so the time below is the global one.
    sums = torch.cat([hits_loss, torch.tensor([samples, expected, clock.total()], dtype=torch.float64,
                                              device=device)])
    D.all_reduce_sum(sums)
    loss, top1, top5, n, expected, model_seconds = sums.tolist()
    elapsed = time.perf_counter() - start
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty loader: the validation set has no samples")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "num_samples": int(n),
            "skipped": max(int(expected - n), 0), "img_s": n * D.world_size() / model_seconds,
            "pipeline_img_s": n / elapsed}
