"""Size and speed of the models of a pruning run, and its report (JSON + Markdown)."""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
from typing import Any, Callable

import torch
import torch.nn as nn

from bench.benchmark import fold_bn, time_forward
from models.complexity import count_macs, count_params

SCHEMA = "rmnet-prune/1"


def model_stats(model: nn.Module, input_size: int, bench: Any) -> dict[str, Any]:
    """Params and MACs of the deploy form (BN folded into the convs) and its img/s (median of
    `bench.repeats` timings of `bench.iters` batches after `bench.warmup`, eval mode, no grad)."""
    deploy = fold_bn(copy.deepcopy(model).float().eval().to(bench.device))
    x = torch.randn(bench.batch_size, 3, input_size, input_size, device=bench.device)
    seconds = time_forward(deploy, x, bench.warmup, bench.iters, bench.repeats)
    return {"params": count_params(deploy), "macs": count_macs(deploy, input_size),
            "img_s": statistics.median(bench.batch_size * bench.iters / t for t in seconds)}


def missed(removed: int, macs: int | None = None, target_macs: float | None = None) -> str | None:
    """What a pruned model failed at, for its report row's `flag` and a warning: it kept every channel,
    or it costs more than its MACs target; None when it did neither."""
    if removed == 0:
        return "pruned nothing"
    if target_macs is not None and macs is not None and macs > target_macs:
        return f"target missed: {macs / 1e6:.3f} M MACs > {target_macs / 1e6:.3f} M"
    return None


def warn_missed(log: Any, label: str, flag: str | None, hint: str) -> None:
    if flag is not None:
        log.warning(f"warning: {label}: {flag}; {hint}")


def sr_text(sr: float | None) -> str:
    """The sparse training a slimming run's model went through, in words."""
    return "not sparse-trained" if sr is None else f"sr {sr:g}"


def device_line(bench: Any) -> str:
    if str(bench.device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(bench.device))
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_report(report: dict[str, Any], out_dir: str,
                 markdown: Callable[[dict[str, Any]], str] | None = None) -> tuple[str, str]:
    """report.json and report.md (`markdown`: the report's renderer, slimming's by default)."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "report.json"), os.path.join(out_dir, "report.md")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    with open(md_path, "w") as f:
        f.write((markdown or to_markdown)(report))
    return json_path, md_path


def _m(n: int) -> str:
    return f"{n / 1e6:.3f} M"


def _top1(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def to_markdown(report: dict[str, Any]) -> str:
    ref = report["reference"]
    lines = [f"# Pruning {report['model']} on {report['data']}", "",
             f"{sr_text(report['sr'])}, {report['criterion']}; sparse checkpoint `{report['sparse_checkpoint']}`; "
             f"speed on {report['device']}, batch {report['bench']['batch_size']}.", "",
             "Pruned params: the share of the unpruned form's parameters removed (RM plain for rmnet, the "
             "ResNet for resnet); x ResNet: parameters relative to the unpruned ResNet. Params and MACs of the "
             "deploy forms (BN folded).", "",
             "| model | params | x ResNet | MACs | img/s | pruned params | top-1 pruned | top-1 fine-tuned |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| {report['model']} ({'' if report.get('sparse_trained', True) else 'not '}sparse-trained, unpruned) | {_m(ref['params'])} | 1.00 | {_m(ref['macs'])} | "
             f"{ref['img_s']:.0f} | - | {_top1(ref.get('top1'))} | - |"]
    for family, r in report["families"].items():
        before, after = r["before"], r["after"]
        if family == "rmnet":
            lines.append(f"| RM plain, unpruned | {_m(before['params'])} | {before['params'] / ref['params']:.2f} | "
                         f"{_m(before['macs'])} | {before['img_s']:.0f} | - | {_top1(before.get('top1'))} | - |")
        flag = f" (**{r['flag']}**)" if r.get("flag") else ""
        lines.append(f"| {family} pruned{flag} | {_m(after['params'])} | {r['params_vs_reference']:.2f} | "
                     f"{_m(after['macs'])} | {after['img_s']:.0f} | "
                     f"{100 * r['pruned_param_ratio']:.1f}% | {_top1(r['top1_pruned'])} | "
                     f"{_top1(r['top1_finetuned'])} |")
    for family, r in report["families"].items():
        lines += ["", f"## {family}: kept channels per layer", "",
                  f"{r['channels_removed']} of {r['channels_total']} channels removed; "
                  f"{r['approximate_channels']} removed channels had a non-zero constant output folded across "
                  "zero padding (exact in the interior only). Artifact: "
                  f"`{r['artifact']}`.", "", "| layer | kept / channels | groups |", "| --- | --- | --- |"]
        for layer in r["layers"]:
            groups = (f"{layer['groups']} -> {layer['groups_kept']}" if "groups" in layer else "-")
            lines.append(f"| {layer['layer']} | {layer['kept']} / {layer['channels']} | {groups} |")
    return "\n".join(lines) + "\n"
