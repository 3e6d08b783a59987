"""The ResRep report.md (report.json and its comparison `rows` are pruning.job's, as for every pruner)."""
from __future__ import annotations

from typing import Any

from ..budget import UNITS
from ..cost import amount
from ..report import mega, top1_text

SCHEMA = "rmnet-resrep/1"


def budget_text(target: float, of: str, kind: str) -> str:
    """The rows' budget: the share of the cost (`resrep.budget.kind`) to remove and whose (`resrep.budget.of`)."""
    whose = "its own" if of == "own" else "the residual model's"
    return f"remove {target:.1%} of {whose} {'latency' if kind == 'latency' else UNITS[kind]}"


def to_markdown(report: dict[str, Any]) -> str:
    ref = report["reference"]
    s = report["settings"]
    kind = report["budget"]["kind"]
    lines = [f"# ResRep on {report['model']} ({report['data']})", "",
             f"Target: {budget_text(report['target'], report['budget']['of'], kind)} ({amount(report[f'target_{kind}'], kind)} "
             f"left for the residual form); lasso {s['lasso']}, penalty on "
             f"{s['penalty_rows']} rows, mask every {s['interval']} steps from epoch {s['start_epochs']}, "
             f"{s['granularity']} channels at a time, fold threshold {s['threshold']}. Base model `{report['base']}`; "
             f"speed on {report['device']}, batch {report['bench']['batch_size']}. Params, MACs and img/s of the "
             "deploy forms (BN folded); MACs removed relative to the residual model.", "",
             "| model | params | MACs | MACs removed | img/s | top-1 with compactors | top-1 |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| {report['model']} (residual, unpruned) | {mega(ref['params'])} | {mega(ref['macs'])} | - | "
             f"{ref['img_s']:.0f} | - | {top1_text(ref.get('top1'))} |"]
    for form, r in report["forms"].items():
        before, after = r["before"], r["after"]
        if form == "rm":
            lines.append(f"| RM plain, unpruned | {mega(before['params'])} | {mega(before['macs'])} | "
                         f"{100 * (1 - before['macs'] / ref['macs']):.1f}% | {before['img_s']:.0f} | - | "
                         f"{top1_text(before.get('top1'))} |")
        flag = f" (**{r['flag']}**)" if r["flag"] else ""
        lines.append(f"| {form} ResRep{flag} | {mega(after['params'])} | {mega(after['macs'])} | "
                     f"{100 * r['macs_removed']:.1f}% | {after['img_s']:.0f} | {top1_text(r['top1_compactor'])} | "
                     f"{top1_text(r['top1_pruned'])} |")
    for form, r in report["forms"].items():
        met = "met" if r["target_met"] else "**not met**"
        lines += ["", f"## {form}: kept channels per layer", "",
                  f"{r['channels_removed']} of {r['channels_total']} channels removed (target {met}); "
                  f"{r['masked']} were masked when training ended, {r['masked_kept']} of them kept because their "
                  f"compactor row had not decayed below the threshold; largest removed row norm "
                  f"{r['max_removed_norm']:.2e} (0: the fold is exact). Artifact: `{r['artifact']}`.", "",
                  "| layer | kept / channels | masked | groups |", "| --- | --- | --- | --- |"]
        for layer in r["layers"]:
            groups = f"{layer['groups']} -> {layer['groups_kept']}" if layer["groups"] > 1 else "-"
            lines.append(f"| {layer['layer']} | {layer['kept']} / {layer['channels']} | {layer['masked']} | {groups} |")
    return "\n".join(lines) + "\n"
