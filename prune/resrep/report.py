"""The ResRep report: report.json (with the comparison `rows` every pruner writes alike) and report.md."""
from __future__ import annotations

from typing import Any

from ..report import _m, _top1

SCHEMA = "rmnet-resrep/1"


def row(report: dict[str, Any], form: str) -> dict[str, Any]:
    """One pruned model in the keys the slimming, AMC and ResRep reports share."""
    r = report["forms"][form]
    return {"method": "resrep", "form": form, "model": report["model"], "data": report["data"],
            "target": report["target"], "params": r["after"]["params"], "macs": r["after"]["macs"],
            "top1_before": r["before"].get("top1"), "top1_pruned": r["top1_pruned"], "top1_finetuned": None,
            "img_s": r["after"]["img_s"], "artifact": r["artifact"], "flag": r["flag"]}


def to_markdown(report: dict[str, Any]) -> str:
    ref = report["reference"]
    s = report["settings"]
    lines = [f"# ResRep on {report['model']} ({report['data']})", "",
             f"Target: {100 * report['target']:.1f}% of the residual model's MACs removed "
             f"({report['target_macs'] / 1e6:.3f} M MACs left) in both forms; lasso {s['lasso']}, penalty on "
             f"{s['penalty_rows']} rows, mask every {s['interval']} steps from epoch {s['start_epochs']}, "
             f"{s['granularity']} channels at a time, fold threshold {s['threshold']}. Base model `{report['base']}`; "
             f"speed on {report['device']}, batch {report['bench']['batch_size']}. Params, MACs and img/s of the "
             "deploy forms (BN folded); MACs removed relative to the residual model.", "",
             "| model | params | MACs | MACs removed | img/s | top-1 with compactors | top-1 |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| {report['model']} (residual, unpruned) | {_m(ref['params'])} | {_m(ref['macs'])} | - | "
             f"{ref['img_s']:.0f} | - | {_top1(ref.get('top1'))} |"]
    for form, r in report["forms"].items():
        before, after = r["before"], r["after"]
        if form == "rm":
            lines.append(f"| RM plain, unpruned | {_m(before['params'])} | {_m(before['macs'])} | "
                         f"{100 * (1 - before['macs'] / ref['macs']):.1f}% | {before['img_s']:.0f} | - | "
                         f"{_top1(before.get('top1'))} |")
        flag = f" (**{r['flag']}**)" if r["flag"] else ""
        lines.append(f"| {form} ResRep{flag} | {_m(after['params'])} | {_m(after['macs'])} | "
                     f"{100 * r['macs_removed']:.1f}% | {after['img_s']:.0f} | {_top1(r['top1_compactor'])} | "
                     f"{_top1(r['top1_pruned'])} |")
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
