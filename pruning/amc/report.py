"""The AMC run's report (the authors' "Help pruning achieve better performance" table: method, FLOPs
ratio, params, MACs, top-1 before and after fine-tuning, img/s) and its reward curves."""
from __future__ import annotations

import os
from typing import Any

from ..budget import UNITS
from ..cost import amount
from ..report import mega, save_figure, top1_text

SCHEMA = "rmnet-amc/1"


def draw_reward_curves(histories: dict[str, list[dict[str, Any]]], warmup: int, path: str) -> str:
    """One line of episode rewards and one of the best reward so far per method; returns `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, history), color in zip(histories.items(), ("tab:red", "tab:blue", "tab:green")):
        episodes = [h["episode"] + 1 for h in history]
        ax.plot(episodes, [h["reward"] for h in history], color=color, alpha=0.35, lw=1, label=f"{label}: episode")
        ax.plot(episodes, [h["best_reward"] for h in history], color=color, lw=2, label=f"{label}: best so far")
    if warmup:
        ax.axvline(warmup + 0.5, color="gray", ls="--", lw=1, label="end of random warm-up")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward (held-out training images)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def relu6_text(entry: dict[str, Any]) -> str:
    """The approximate RM conversion of a ReLU6 model (amc.relu6), as measured; empty when exact."""
    c = entry.get("conversion") or {}
    if c.get("relu6") != "approximate":
        return ""
    return (f" Converted with ReLU in place of ReLU6 (amc.relu6=approximate): output difference {c['max_rel']:.2e} "
            f"relative (float64, random input), validation top-1 {c['top1_relu6']:.2f} -> {c['top1_converted']:.2f} "
            f"before the RM form's fine-tuning.")


def to_markdown(report: dict[str, Any]) -> str:
    ref, s = report["reference"], report["search"]
    lines = [f"# RM + AMC: {report['model']} on {report['data']}, FLOPs ratio {report['flops_ratio']:g}", "",
             f"Search: {s['episodes']} episodes ({s['warmup']} random warm-up), reward `{s['reward']}` of the "
             f"{s['reward_metric']} accuracy on "
             f"{s['holdout']} held-out training images, keep ratios in [{s['lbound']}, {s['rbound']}], channels in "
             f"multiples of {s['channel_round']}, least-squares refit {'on' if s['refit'] else 'off'}. "
             f"Params, MACs and img/s of the deploy forms (BN folded), speed on {report['device']}, "
             f"batch {report['bench']['batch_size']}. Budget: {report['rows'][0]['budget'] if report['rows'] else '-'}; top-1 on "
             f"the validation set.", "",
             f"| method | form | {UNITS[report['budget']['kind']]} (target / reached) | params | MACs | top-1 before | top-1 pruned | "
             "top-1 fine-tuned | img/s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| unpruned {report['model']} | residual | 1 | {mega(ref['params'])} | {mega(ref['macs'])} | "
             f"{top1_text(ref['top1'])} | - | - | {ref['img_s']:.0f} |"]
    for row in report["rows"]:
        m = report["methods"][row["form"]]
        flag = f" (**{row['flag']}**)" if row.get("flag") else ""
        kind, p = row.get("budget_kind", "macs"), m["policy"]
        lines.append(f"| {m['label']}{flag} | {m['form']} | {amount(row['target'], kind, False)} / "
                     f"{amount(p.get('cost', p['macs']), kind, False)} | "
                     f"{mega(row['params'])} | {mega(row['macs'])} | {top1_text(row['top1_before'])} | "
                     f"{top1_text(row['top1_pruned'])} | {top1_text(row['top1_finetuned'])} | {row['img_s']:.0f} |")
    lines += ["", f"Reward curves: `{os.path.basename(report['reward_curves'])}`."]
    for row in report["rows"]:
        m = report["methods"][row["form"]]
        p = m["policy"]
        lines += ["", f"## {m['label']}: kept channels per layer", "",
                  f"Best policy from episode {p['episode'] + 1} (reward {p['reward']:.4f}, held-out "
                  f"{p['reward_metric']} {p['holdout_accuracy']:.2f}); {p['macs']:,} of {p['total_macs']:,} MACs. "
                  f"Pruned model `{m['pruned_artifact']}`, final model `{row['artifact']}`.{relu6_text(m)}", "",
                  "| layer | read by | kept / channels |", "| --- | --- | --- |"]
        lines += [f"| {layer['layer']} | {layer['reader']} | {layer['kept']} / {layer['channels']} |"
                  for layer in p["layers"]]
    return "\n".join(lines) + "\n"

