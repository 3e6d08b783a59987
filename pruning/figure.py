"""Paper Figure 6 from the reports of pruning runs: accuracy vs speed (a) and vs pruned-parameter
ratio (b), RMNet (pruned after RM) against ResNet (pruned with its residual pruning groups).

    python -m pruning.figure checkpoints          # one PNG per (model, data) found under the folder
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from collections import defaultdict
from typing import Any

from .report import SCHEMA, save_figure, sr_text

STYLE = {"rm": ("RMNet (pruned after RM)", "tab:red", "o"), "residual": ("ResNet", "tab:blue", "s")}


def collect(root: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Reports under `root` grouped by (model, data)."""
    runs = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(root, "**", "report.json"), recursive=True)):
        with open(path) as f:
            report = json.load(f)
        if report.get("schema") == SCHEMA:
            runs[(report["model"], report["data"])].append(report)
    return runs


def points(reports: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per family: img/s, pruned-parameter ratio and top-1 (fine-tuned when available) of each run."""
    out = defaultdict(list)
    for r in reports:
        for family, f in r["forms"].items():
            top1 = f["top1_finetuned"] if f["top1_finetuned"] is not None else f["top1_pruned"]
            out[family].append({"img_s": f["after"]["img_s"], "ratio": f["pruned_param_ratio"], "top1": top1,
                                "label": f"{sr_text(r['sr'])}, {r['criterion']}"})
    return {k: sorted(v, key=lambda p: p["ratio"]) for k, v in out.items()}


def draw(reports: list[dict[str, Any]], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_speed, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4.2))
    for family, pts in points(reports).items():
        name, color, marker = STYLE.get(family, (family, None, "^"))
        top1 = [p["top1"] for p in pts]
        ax_speed.scatter([p["img_s"] for p in pts], top1, color=color, marker=marker, label=name)
        ax_ratio.plot([100 * p["ratio"] for p in pts], top1, color=color, marker=marker, label=name)
    ref = reports[0]["reference"]
    if ref.get("top1") is not None:
        ax_speed.scatter([ref["img_s"]], [ref["top1"]], color="black", marker="*", s=90, label="unpruned ResNet")
    first = reports[0]
    ax_speed.set(xlabel=f"speed (img/s, {first['device']})", ylabel="top-1 accuracy (%)",
                 title="(a) accuracy vs speed")
    ax_ratio.set(xlabel="pruned parameters (% of the unpruned form)", ylabel="top-1 accuracy (%)", title="(b) accuracy vs pruned ratio")
    for ax in (ax_speed, ax_ratio):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Pruning {first['model']} on {first['data']} ({len(reports)} runs)")
    return save_figure(fig, path)


def draw_figure6(root: str, out_dir: str | None = None) -> list[str]:
    """Draw `figure6-<model>-<data>.png` in `out_dir` (default `root`) for every (model, data) with
    reports under `root`; returns the paths written."""
    return [draw(reports, os.path.join(out_dir or root, f"figure6-{model}-{data}.png"))
            for (model, data), reports in collect(root).items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw paper Figure 6 from the report.json files of prune.py runs.")
    parser.add_argument("root", help="folder searched recursively for report.json (e.g. checkpoints)")
    parser.add_argument("--out-dir", default=None, help="where to write the PNGs (default: root)")
    args = parser.parse_args(argv)
    paths = draw_figure6(args.root, args.out_dir)
    if not paths:
        raise SystemExit(f"no pruning reports (report.json with schema {SCHEMA}) under {args.root}")
    print("\n".join(paths))


if __name__ == "__main__":
    main()
