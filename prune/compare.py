"""One table of every pruned model under some folders: the pruners (network slimming, RM + AMC,
ResRep) and the two forms (pruned residual, pruned after RM) side by side.

    python -m prune.compare checkpoints                       # Markdown on stdout
    python -m prune.compare checkpoints --out outputs/pruning.md

Each pruner's report.json carries a `rows` list of one dict per pruned model with the keys of ROW.
`target` is each method's own: slimming's criterion (thr<threshold> | ratio<ratio>), AMC's FLOPs
ratio (the fraction of each form's MACs kept), ResRep's fraction of the residual model's MACs removed;
the MACs column says what each model reached, and `flag` (shown in bold) a model that pruned nothing
or costs more than its target.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Any

ROW = ("method", "form", "model", "data", "target", "params", "macs", "top1_before", "top1_pruned",
       "top1_finetuned", "img_s", "artifact", "flag")


def collect(roots: list[str]) -> list[dict[str, Any]]:
    """The rows of every report.json under `roots`, ordered by model, data, method and form."""
    rows = []
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "**", "report.json"), recursive=True)):
            with open(path) as f:
                rows += json.load(f).get("rows", [])
    return sorted(rows, key=lambda r: (r["model"], r["data"], r["method"], r["form"], str(r["target"])))


TARGET = {"amc": "keep {:g} of its MACs", "resrep": "remove {:.1%} of the residual MACs"}


def target_text(row: dict[str, Any]) -> str:
    """The method's target, and in bold what the model missed (rows of older reports have no flag)."""
    text = TARGET.get(row["method"], "{}").format(row["target"])
    return f"{text}: **{row['flag']}**" if row.get("flag") else text


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | data | method | form | target | params (M) | MMACs | top-1 before | top-1 pruned | "
             "top-1 fine-tuned | img/s |", "|" + " --- |" * 11]
    for r in rows:
        lines.append(f"| {r['model']} | {r['data']} | {r['method']} | {r['form']} | {target_text(r)} | "
                     f"{r['params'] / 1e6:.3f} | {r['macs'] / 1e6:.1f} | {_num(r['top1_before'], '.2f')} | "
                     f"{_num(r['top1_pruned'], '.2f')} | {_num(r['top1_finetuned'], '.2f')} | {r['img_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="folders searched recursively for report.json")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    rows = collect(args.roots)
    if not rows:
        raise SystemExit(f"error: no pruning reports with comparison rows under {', '.join(args.roots)}")
    table = to_markdown(rows)
    print(table, end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
