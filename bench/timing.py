"""Timing a model's forward passes: interleaved repeats on CPU or between CUDA events, and the CPU
thread count timing uses. The benchmark, the latency table and the pruners' reports share them."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


def physical_cores() -> int:
    """Physical cores this process may run on (the hyper-threads of a core count once); the number of
    logical CPUs where the topology cannot be read."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return len(cpus)
    return max(len(cores), 1)


def cpu_threads() -> int:
    """The CPU thread count for timing: physical cores minus one, at least one (jobs.benchmark._threads says why)."""
    return max(physical_cores() - 1, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_interleaved(calls: dict[Any, Callable[[], Any]], device: torch.device, warmup: int, iters: int,
                     repeats: int) -> dict[Any, list[float]]:
    """Seconds for `iters` calls of each function, once per repeat, after `warmup` untimed calls of
    each. Repeats are interleaved (all functions' first timed block, then all second ones, ...). On
    CUDA, `device` is the current device throughout and the events sit on its current stream, the
    stream its work runs on (events on another device's stream would time nothing of it)."""
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        return _time_blocks(calls, device, warmup, iters, repeats)


def _time_blocks(calls: dict[Any, Callable[[], Any]], device: torch.device, warmup: int, iters: int,
                 repeats: int) -> dict[Any, list[float]]:
    for call in calls.values():
        for _ in range(warmup):
            call()
    _sync(device)
    seconds: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            if device.type == "cuda":
                stream = torch.cuda.current_stream(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                for _ in range(iters):
                    call()
                end.record(stream)
                end.synchronize()
                seconds[key].append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                for _ in range(iters):
                    call()
                seconds[key].append(time.perf_counter() - t0)
    return seconds


def time_forward(model: nn.Module, x: torch.Tensor, warmup: int, iters: int, repeats: int) -> list[float]:
    """Seconds for `iters` forward passes, once per repeat, after `warmup` untimed passes."""
    return time_interleaved({0: lambda: model(x)}, x.device, warmup, iters, repeats)[0]
