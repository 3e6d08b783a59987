"""Input-pipeline throughput per CPU core: `python -m data.bench_loader [--out FILE.md]`.

Writes its own 500x375 JPEGs (smooth colour fields, edges and sensor-like noise; nothing is
downloaded) as an ImageNet class folder, then runs conf/data/imagenet.yaml's training transform
(RandomResizedCrop 224 + flip) in ONE DataLoader worker process for each pipeline, round after
round so that both see the same machine load:

  before  PIL decode, float32 normalised in the worker (the previous pipeline)
  pil-u8  PIL decode, uint8 out of the worker
  now     torchvision.io.decode_jpeg (PIL for other files), uint8 out of the worker; the loader
          normalises on the training device (data.DeviceLoader), which is not worker time

img/s per core = images / CPU seconds of the worker process (from /proc: a busy machine slows the
wall clock more than this figure, though a shared core's caches still slow it); the wall-clock rate
of the one worker and the load average are printed beside it, then the CPU time per image of the new
pipeline's parts (decode, transform) measured in the main process.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader, RandomSampler

from .datasets import build_dataset
from .transforms import build_transform

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "data", "imagenet.yaml")
PIPELINES = ("before", "pil-u8", "now")


def write_jpegs(root: str, count: int, seed: int = 0) -> float:
    """`count` 500x375 JPEGs (quality 90) under root/train/c0; returns their mean size in KB."""
    from PIL import Image

    folder = os.path.join(root, "train", "c0")
    os.makedirs(folder)
    g = torch.Generator().manual_seed(seed)
    total = 0
    for i in range(count):
        field = torch.rand(1, 3, 6, 8, generator=g)
        img = torch.nn.functional.interpolate(field, size=(375, 500), mode="bicubic", align_corners=False)[0]
        for _ in range(6):   # flat objects with sharp edges
            y, x = (torch.rand(2, generator=g) * torch.tensor([300.0, 420.0])).long().tolist()
            img[:, y:y + 75, x:x + 80] = torch.rand(3, 1, 1, generator=g)
        img = img + 0.05 * torch.randn(img.shape, generator=g)
        pixels = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        path = os.path.join(folder, f"{i}.JPEG")
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        total += os.path.getsize(path)
    return total / count / 1024


def _dataset(cfg, pipeline: str):
    from torchvision.datasets.folder import default_loader

    dataset = build_dataset(cfg, "train", build_transform(cfg, train=True, normalize=pipeline == "before"))
    if pipeline != "now":
        dataset.loader = default_loader
    return dataset


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def measure(cfg, pipeline: str, samples: int, batch_size: int) -> tuple[float, float]:
    """(images per worker CPU second, images per wall second) of one worker over `samples` images."""
    dataset = _dataset(cfg, pipeline)
    sampler = RandomSampler(dataset, replacement=True, num_samples=samples, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=1)
    before = set(multiprocessing.active_children())
    start = time.perf_counter()
    it = iter(loader)
    (worker,) = set(multiprocessing.active_children()) - before
    seen, cpu = 0, 0.0
    for images, _ in it:
        seen += len(images)
        if seen == samples:   # the last batch: read the worker's time before it exits
            cpu = _cpu_seconds(worker.pid)
    wall = time.perf_counter() - start
    return (seen / cpu if cpu else float("nan")), seen / wall   # nan: too few images for the clock's ticks


def stages(cfg, repeats: int = 5) -> dict[str, float]:
    """Median CPU ms per image of the new pipeline's parts, in this process (no worker, no collate)."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    dataset = _dataset(cfg, "now")
    blobs = [read_file(path) for path, _ in dataset.samples]
    images = [decode_jpeg(blob) for blob in blobs]
    parts = {"decode_jpeg": lambda i: decode_jpeg(blobs[i], mode=ImageReadMode.UNCHANGED),
             "crop, resize and flip (v2)": lambda i: dataset.transform(images[i]),
             "whole sample (read, decode, transform)": lambda i: dataset[i]}
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, part in parts.items():
            start = time.process_time()
            for i in range(len(blobs)):
                part(i)
            times[name].append((time.process_time() - start) / len(blobs) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{model}, {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.bench_loader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=128, help="distinct JPEGs written (default 128)")
    parser.add_argument("--samples", type=int, default=1024, help="images per measurement (default 1024)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per pipeline (default 5)")
    parser.add_argument("--out", help="also write the results as Markdown to this file")
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    torch.set_num_threads(1)
    rates: dict[str, list[tuple[float, float]]] = {p: [] for p in PIPELINES}
    with tempfile.TemporaryDirectory() as root:
        kb = write_jpegs(root, args.files)
        cfg = OmegaConf.load(CONF)
        cfg.merge_with({"root": root, "num_classes": 1})
        load_start = os.getloadavg()
        for _ in range(args.rounds):
            for pipeline in PIPELINES:
                rates[pipeline].append(measure(cfg, pipeline, args.samples, args.batch_size))
        parts = stages(cfg)
        load_end = os.getloadavg()
    lines = [f"machine: {_machine()}",
             f"torch {torch.__version__}, torchvision {__import__('torchvision').__version__}, "
             f"Pillow {__import__('PIL').__version__}, Python {platform.python_version()}",
             f"command: python -m data.bench_loader {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip(),
             f"images: {args.files} generated 500x375 JPEGs (quality 90, mean {kb:.0f} KB), {args.samples} per "
             f"measurement, batch {args.batch_size}, training transform of conf/data/imagenet.yaml (224)",
             f"load average (1/5/15 min): start {' '.join(f'{x:.2f}' for x in load_start)}, "
             f"end {' '.join(f'{x:.2f}' for x in load_end)}", "",
             "| pipeline | img/s per core (median) | per round | img/s wall, one worker (median) |",
             "| --- | ---: | --- | ---: |"]
    for pipeline in PIPELINES:
        per_core = [r[0] for r in rates[pipeline]]
        lines.append(f"| {pipeline} | {statistics.median(per_core):.0f} | {' '.join(f'{r:.0f}' for r in per_core)} | "
                     f"{statistics.median(r[1] for r in rates[pipeline]):.0f} |")
    lines += ["", "CPU ms per image of the new pipeline's parts, in the main process (median of 5 passes over the files):",
              "", "| part | ms |", "| --- | ---: |"] + [f"| {name} | {ms:.3f} |" for name, ms in parts.items()]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# Input pipeline throughput (`python -m data.bench_loader`)\n\n{text}\n")


if __name__ == "__main__":
    main()
