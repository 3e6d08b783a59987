"""The ResRep report: report.json (with the comparison `rows` every pruner writes alike) and report.md."""
from __future__ import annotations

from typing import Any

from ..budget import UNITS
from ..cost import amount
from ..report import mega, top1_text
from ..row import Row

SCHEMA = "rmnet-resrep/1"


def row(report: dict[str, Any], form: str) -> dict[str, Any]:
    """One pruned model in the keys the slimming, AMC and ResRep reports share."""
    r, kind = report["forms"][form], _kind(report)
    return Row("resrep", form, report["model"], report["data"], budget_text(report), r[f"target_{kind}"], r["after"]["params"], r["after"]["macs"], r["before"].get("top1"),
               r["top1_pruned"], None, r["after"]["img_s"], r["artifact"], r["flag"], kind,
               speeds=r["after"].get("speeds", {})).as_dict()


def _kind(report: dict[str, Any]) -> str:
    return (report.get("budget") or {}).get("kind", "macs")


def budget_text(report: dict[str, Any]) -> str:
    whose = "its own" if (report.get("budget") or {}).get("of") == "own" else "the residual model's"
    return f"remove {report['target']:.1%} of {whose} {'latency' if _kind(report) == 'latency' else UNITS[_kind(report)]}"


def to_markdown(report: dict[str, Any]) -> str:
    ref = report["reference"]
    s = report["settings"]
    lines = [f"# ResRep on {report['model']} ({report['data']})", "",
             f"Target: {budget_text(report)} ({amount(report[f'target_{_kind(report)}'], _kind(report))} left for the residual "
             f"form); lasso {s['lasso']}, penalty on "
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
