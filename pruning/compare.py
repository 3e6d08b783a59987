"""One table and one Pareto plot of every pruned model under some folders: the pruners (network
slimming, RM + AMC, ResRep) and the two forms (pruned residual, pruned after RM) side by side.

    python -m pruning.compare checkpoints                       # Markdown on stdout, checkpoints/pareto.png
    python -m pruning.compare checkpoints --out outputs/pruning.md --plot outputs/pareto.png --runtime onnxruntime
    python -m pruning.compare checkpoints --time onnxruntime onnxruntime_int8    # time every model again, interleaved

The plot: top-1 (fine-tuned when the run fine-tuned) against img/s in `--runtime` (a runtime of the
reports' bench.runtimes) and against MACs, one point per method x form x budget.

Each pruner's report.json carries a `rows` list of one `pruning.row.Row` per pruned model. `budget`
says in words what the run asked for (slimming's criterion thr<threshold> | ratio<ratio>, AMC's and
ResRep's cost budget), `target` the absolute cost it allows; the MACs column says what each model
reached, and `flag` (shown in bold) a model that pruned nothing or costs more than its target.

Each report timed its models while it ran, at that moment's load; `--time RUNTIME...` times every
row's model file again in one interleaved run (`pruning.retime`), so the speed axis compares like
with like, and writes those numbers with their settings and load average beside the table.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any

from .report import save_figure
from .retime import retime
from .row import Row


def collect(roots: list[str]) -> list[dict[str, Any]]:
    """The rows of every report.json under `roots`, ordered by model, data, method and form."""
    rows = []
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "**", "report.json"), recursive=True)):
            with open(path) as f:
                rows += [Row.from_dict(r).as_dict() for r in json.load(f).get("rows", [])]
    return sorted(rows, key=lambda r: (r["model"], r["data"], r["method"], r["form"], r["budget"]))


def target_text(row: dict[str, Any]) -> str:
    """The run's budget, and in bold what the model missed."""
    return f"{row['budget']}: **{row['flag']}**" if row.get("flag") else row["budget"]


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def speed(row: dict[str, Any], runtime: str) -> float | None:
    """img/s in `runtime` (eager: `img_s`); None when the row's run did not time that runtime."""
    return row["img_s"] if runtime == "eager" else row["speeds"].get(runtime)


def to_markdown(rows: list[dict[str, Any]], runtime: str = "onnxruntime", more: tuple[str, ...] = ()) -> str:
    """The table: img/s eager, in `runtime`, and in each of `more` (the other runtimes `--time` timed)."""
    runtimes = [runtime, *(m for m in more if m not in ("eager", runtime))]
    lines = ["| model | data | method | form | budget | params (M) | MMACs | top-1 before | top-1 pruned | "
             "top-1 fine-tuned | img/s eager | " + " | ".join(f"img/s {rt}" for rt in runtimes) + " |",
             "|" + " --- |" * (11 + len(runtimes))]
    for r in rows:
        lines.append(f"| {r['model']} | {r['data']} | {r['method']} | {r['form']} | {target_text(r)} | "
                     f"{r['params'] / 1e6:.3f} | {r['macs'] / 1e6:.1f} | {_num(r['top1_before'], '.2f')} | "
                     f"{_num(r['top1_pruned'], '.2f')} | {_num(r['top1_finetuned'], '.2f')} | {r['img_s']:.0f} | "
                     + " | ".join(_num(speed(r, rt), '.0f') for rt in runtimes) + " |")
    return "\n".join(lines) + "\n"


MARKERS = {"residual": "s", "rm": "o"}
COLORS = {"slimming": "tab:blue", "amc": "tab:red", "resrep": "tab:green"}


def draw(rows: list[dict[str, Any]], runtime: str, path: str) -> str:
    """Top-1 against img/s in `runtime` and against MACs, one series per (model, data, method, form)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_speed, ax_macs) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["model"], r["data"], r["method"], r["form"]), []).append(r)
    for (model, data, method, form), pts in series.items():
        top1 = [Row.from_dict(p).top1 for p in pts]
        style = dict(marker=MARKERS.get(form, "^"), color=COLORS.get(method), ls="none",
                     label=f"{model}/{data} {method} {form}")
        timed = [(speed(p, runtime), t) for p, t in zip(pts, top1) if speed(p, runtime) is not None and t is not None]
        ax_speed.plot([s for s, _ in timed], [t for _, t in timed], **style)
        ax_macs.plot([p["macs"] / 1e6 for p in pts], top1, **style)
    ax_speed.set(xlabel=f"img/s ({runtime})", ylabel="top-1 (%)", title="top-1 vs measured speed")
    ax_macs.set(xlabel="MMACs", ylabel="top-1 (%)", title="top-1 vs MACs")
    ax_macs.legend(fontsize=7)
    return save_figure(fig, path)


def retimed(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Replace the rows' speeds by one interleaved run's (`pruning.retime`), write that run's numbers
    to timing.json beside the plot, and return the table's note on how they were measured."""
    missing = [r["artifact"] for r in rows if not os.path.isfile(r["artifact"])]
    if missing:
        raise SystemExit(f"error: --time needs the rows' model files; missing: {', '.join(missing[:3])}")
    timing = retime(rows, list(args.time), args.batch_size, repeats=args.repeats)
    for row, speeds in zip(rows, timing["speeds"]):
        row["speeds"] = {**row["speeds"], **speeds}
        row["img_s"] = speeds.get("eager", row["img_s"])
    path = os.path.join(os.path.dirname(os.path.abspath(args.plot)) if args.plot else args.roots[0], "timing.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({**timing, "artifacts": [r["artifact"] for r in rows]}, f, indent=2)
    t = timing["settings"]
    load = ", ".join(f"{a:.2f}" for a in (timing["load_before"] or [])[:1] + (timing["load_after"] or [])[:1])
    return (f"\nimg/s of {', '.join(args.time)}: one interleaved run (`--time`), batch {t['batch_size']}, "
            f"{t['threads']} thread(s), median of {t['repeats']} x {t['iters']} calls; load average {load} "
            f"(before, after); numbers in `{path}`.\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="folders searched recursively for report.json")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    parser.add_argument("--plot", help="the Pareto plot (PNG); default: pareto.png in the first folder")
    parser.add_argument("--runtime", help="the speed axis: a runtime of the reports' bench.runtimes (default: "
                        "onnxruntime where the reports timed it, else eager)")
    parser.add_argument("--time", nargs="+", metavar="RUNTIME", help="time every row's model again in these "
                        "runtimes (onnxruntime, onnxruntime_int8, eager, compile), interleaved in one run")
    parser.add_argument("--batch-size", type=int, default=1, help="--time: images per call (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="--time: timed blocks per model (median)")
    args = parser.parse_args(argv)
    rows = collect(args.roots)
    if not rows:
        raise SystemExit(f"error: no pruning reports with comparison rows under {', '.join(args.roots)}")
    timing_note = ""
    if args.time:
        timing_note = retimed(rows, args)
    timed = {name for r in rows for name in r["speeds"]} | {"eager"}
    runtime = args.runtime or ("onnxruntime" if "onnxruntime" in timed else "eager")
    if runtime not in timed:
        print(f"error: no report timed runtime {runtime!r}; pass --runtime with one of {', '.join(sorted(timed))}",
              file=sys.stderr)
        raise SystemExit(2)
    plot = draw(rows, runtime, args.plot or os.path.join(args.roots[0], "pareto.png"))
    table = to_markdown(rows, runtime, tuple(args.time or ())) + timing_note + f"\nPlot: `{plot}`.\n"
    print(table, end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
