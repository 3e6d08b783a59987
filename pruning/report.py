"""Size and speed of the models of a pruning run, and its report (JSON + Markdown)."""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import tempfile
from typing import Any, Callable

import torch
import torch.nn as nn

from bench.forms import fold_bn
from bench.runtimes import RUNTIMES, RuntimeContext, check_runtimes
from bench.timing import time_interleaved
from models.complexity import count_macs, count_params

SCHEMA = "rmnet-prune/2"   # 2: forms (rm, residual) replace families (rmnet, resnet)


def model_stats(model: nn.Module, input_size: int, bench: Any) -> dict[str, Any]:
    """Params and MACs of the deploy form (BN folded into the convs), its eager img/s (`img_s`) and
    its img/s in every runtime of `bench.runtimes` (`speeds`: eager, onnxruntime, onnxruntime_int8,
    compile; bench/runtimes.py), each the median of `bench.repeats` timings of `bench.iters` batches
    after `bench.warmup`, eval mode, no grad."""
    deploy = fold_bn(copy.deepcopy(model).float().eval().to(bench.device))
    x = torch.randn(bench.batch_size, 3, input_size, input_size, device=bench.device)
    speeds = {name: img_s(deploy, x, name, bench) for name in dict.fromkeys(["eager", *bench.get("runtimes", [])])}
    return {"params": count_params(deploy), "macs": count_macs(deploy, input_size), "img_s": speeds["eager"],
            "speeds": speeds}


def prepare_run(deploy: nn.Module, x: torch.Tensor, runtime: str, work_dir: str) -> Callable[[], Any]:
    """A call of `deploy` on batch `x` in `runtime`, its files in `work_dir` (INT8 calibrated on
    seeded N(0, 1) batches, the scale of normalised images, as benchmark.py does for a model without
    data: speed does not depend on the calibration data)."""
    gen = torch.Generator().manual_seed(0)
    ctx = RuntimeContext(work_dir, x.cpu(), calibration=[torch.randn(*x.shape, generator=gen) for _ in range(4)])
    run = RUNTIMES[runtime].prepare(deploy, "pruned", ctx)
    return lambda: run(x)


def images_per_s(seconds: list[float], batch: int, iters: int) -> float:
    """img/s of the median repeat, from the seconds of each repeat of `iters` calls on `batch` images."""
    return statistics.median(batch * iters / t for t in seconds)


def img_s(deploy: nn.Module, x: torch.Tensor, runtime: str, bench: Any) -> float:
    """Images per second of `deploy` on batch `x` in `runtime` (`prepare_run`)."""
    with tempfile.TemporaryDirectory() as work, torch.no_grad():
        call = prepare_run(deploy, x, runtime, work)
        seconds = time_interleaved({0: call}, x.device, bench.warmup, bench.iters, bench.repeats)[0]
    return images_per_s(seconds, x.shape[0], bench.iters)


def missed(removed: int, cost: float | None = None, target: float | None = None, kind: str = "macs") -> str | None:
    """What a pruned model failed at, for its report row's `flag` and a warning: it kept every channel,
    or it costs more than its target (`kind`: macs | params | latency); None when it did neither."""
    if removed == 0:
        return "pruned nothing"
    if target is not None and cost is not None and cost > target:
        if kind == "latency":
            return f"target missed: {cost:.3f} ms > {target:.3f} ms"
        return f"target missed: {cost / 1e6:.3f} M {'MACs' if kind == 'macs' else 'params'} > {target / 1e6:.3f} M"
    return None


def warn_missed(log: Any, label: str, flag: str | None, hint: str) -> None:
    if flag is not None:
        log.warning(f"warning: {label}: {flag}; {hint}")


def sr_text(sr: float | None) -> str:
    """The sparse training a slimming run's model went through, in words."""
    return "not sparse-trained" if sr is None else f"sr {sr:g}"


def check_bench(bench: Any) -> None:
    """`<section>.bench.runtimes`: known runtimes whose packages import, on the bench device."""
    check_runtimes(list(bench.get("runtimes", ["eager"])), str(bench.device), ["fp32"])


def device_line(bench: Any) -> str:
    if str(bench.device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(bench.device))
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_report(report: dict[str, Any], out_dir: str, markdown: Callable[[dict[str, Any]], str]) -> tuple[str, str]:
    """report.json and report.md (`markdown`: the pruner's renderer)."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "report.json"), os.path.join(out_dir, "report.md")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    with open(md_path, "w") as f:
        f.write(markdown(report))
    return json_path, md_path


def mega(n: int) -> str:
    return f"{n / 1e6:.3f} M"


def top1_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def budget_lines(report: dict[str, Any]) -> list[str]:
    """Each form's cost against the budget's absolute target, and the latency table it was timed with."""
    budget = report.get("budget")
    if not budget:
        return []
    unit = {"macs": "MACs", "params": "params", "latency": "ms"}[budget["kind"]]
    lines = ["", f"Budget: {report['budget_text']} ({budget['kind']} of the deploy form).", "",
             f"| form | target ({unit}) | reached ({unit}) |", "| --- | --- | --- |"]
    lines += [f"| {form} | {r['target']:,.4g} | {r['cost']:,.4g} |" for form, r in report["forms"].items()]
    if budget.get("latency_table"):
        check = budget.get("check")
        if check:
            lines += ["", f"The table's sum for the unpruned residual model: {check['sum_ms']:.3f} ms, measured whole "
                          f"{check['whole_ms']:.3f} ms (ratio {check['ratio']:.2f})."]
        lines += ["", "Per-layer latency table:", "", budget["latency_table"].rstrip()]
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    ref = report["reference"]
    lines = [f"# Pruning {report['model']} on {report['data']}", "",
             f"{sr_text(report['sr'])}, {report['budget_text']}, widths in multiples of "
             f"{report['channel_round']}; sparse checkpoint `{report['sparse_checkpoint']}`; "
             f"speed on {report['device']}, batch {report['bench']['batch_size']}.", "",
             "Pruned params: the share of the unpruned form's parameters removed (RM plain for rm, the "
             "ResNet for residual); x ResNet: parameters relative to the unpruned ResNet. Params and MACs of the "
             "deploy forms (BN folded).", "",
             "| model | params | x ResNet | MACs | img/s | pruned params | top-1 pruned | top-1 fine-tuned |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| {report['model']} ({'' if report.get('sparse_trained', True) else 'not '}sparse-trained, unpruned) | {mega(ref['params'])} | 1.00 | {mega(ref['macs'])} | "
             f"{ref['img_s']:.0f} | - | {top1_text(ref.get('top1'))} | - |"]
    for family, r in report["forms"].items():
        before, after = r["before"], r["after"]
        if family == "rm":
            lines.append(f"| RM plain, unpruned | {mega(before['params'])} | {before['params'] / ref['params']:.2f} | "
                         f"{mega(before['macs'])} | {before['img_s']:.0f} | - | {top1_text(before.get('top1'))} | - |")
        flag = f" (**{r['flag']}**)" if r.get("flag") else ""
        lines.append(f"| {family} pruned{flag} | {mega(after['params'])} | {r['params_vs_reference']:.2f} | "
                     f"{mega(after['macs'])} | {after['img_s']:.0f} | "
                     f"{100 * r['pruned_param_ratio']:.1f}% | {top1_text(r['top1_pruned'])} | "
                     f"{top1_text(r['top1_finetuned'])} |")
    lines += budget_lines(report)
    for family, r in report["forms"].items():
        lines += ["", f"## {family}: kept channels per layer", "",
                  f"{r['channels_removed']} of {r['channels_total']} channels removed; "
                  f"{r['approximate_channels']} removed channels had a non-zero constant output folded across "
                  "zero padding (exact in the interior only). Artifact: "
                  f"`{r['artifact']}`.", "", "| layer | kept / channels | groups |", "| --- | --- | --- |"]
        for layer in r["layers"]:
            groups = (f"{layer['groups']} -> {layer['groups_kept']}" if "groups" in layer else "-")
            lines.append(f"| {layer['layer']} | {layer['kept']} / {layer['channels']} | {groups} |")
    return "\n".join(lines) + "\n"


def save_figure(fig, path: str) -> str:
    """Lay out and write a matplotlib figure to `path` (its folder made if missing), close it, return path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
