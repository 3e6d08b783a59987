"""Time the pruned models of many reports again, all in one run and interleaved (`python -m
pruning.compare DIR --time`): each report timed its models while it ran, at whatever load the machine
had then, so speeds of different reports (and of two forms of one report) are not comparable. Here
every (model, runtime) pair is prepared first, then `bench.timing.time_interleaved` runs their
timed blocks in turn, so a busy spell slows all of them alike and their ratios hold; the load
average before and after is recorded with the numbers.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from tqdm import tqdm

import artifacts
from bench.forms import fold_bn
from bench.runtimes import check_runtimes
from bench.timing import cpu_threads, time_interleaved

from .report import images_per_s, prepare_run


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def retime(rows: list[dict[str, Any]], runtimes: list[str], batch_size: int = 1, warmup: int = 20,
           iters: int = 50, repeats: int = 7, threads: int | None = None) -> dict[str, Any]:
    """img/s of every row's model file (`artifact`) in every runtime, interleaved in one run on the
    CPU; returns {"speeds": [{runtime: img/s} per row], "settings": ..., "load_before", "load_after"}.
    INT8 calibrates on seeded N(0, 1) batches (`pruning.report.prepare_run`)."""
    check_runtimes(runtimes, "cpu", ["fp32"])
    threads = threads or cpu_threads()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    try:
        with tempfile.TemporaryDirectory() as work, torch.inference_mode():
            calls = {}
            for i, row in enumerate(tqdm(rows, desc="prepare", unit="model", disable=None)):
                art = artifacts.load(row["artifact"])
                size = art.spec.input_size
                x = torch.randn(batch_size, 3, size, size, generator=gen)
                deploy = fold_bn(art.model.float().eval())
                for runtime in runtimes:
                    folder = os.path.join(work, f"{i}-{runtime}")
                    os.makedirs(folder)
                    calls[(i, runtime)] = prepare_run(deploy, x, runtime, folder)
            before = load_average()
            seconds = time_interleaved(calls, torch.device("cpu"), warmup, iters, repeats)
            after = load_average()
    finally:
        torch.set_num_threads(saved)
    speeds: list[dict[str, float]] = [{} for _ in rows]
    for (i, runtime), times in seconds.items():
        speeds[i][runtime] = images_per_s(times, batch_size, iters)
    return {"speeds": speeds, "load_before": before, "load_after": after,
            "settings": {"runtimes": runtimes, "batch_size": batch_size, "warmup": warmup, "iters": iters,
                         "repeats": repeats, "threads": threads}}
