"""The benchmark's report: which file or model every row belongs to, the spread of its repeats, and
the Markdown rendering of the JSON report.

Rows are keyed by their source (a registry model, or one file), never by the model name alone: two
files of one architecture (a run's deploy.pt and its pruned, fine-tuned model) share the name, and
every ratio, best-form line and fidelity row must compare a file with itself.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from models import ModelSpec

from .runtimes import RUNTIMES

FORMS = ("residual", "bn_folded", "plain")
# The ratios the benchmark exists for (plain vs BN-folded, one runtime vs another) are often 1.1-1.5x:
# when the repeats of one row differ by more than a fifth of their median, that noise is as large as
# the effect, and the machine was busy (a shared CPU: 10.7-39.3 img/s around 11.4).
WIDE_SPREAD = 0.2


def source_labels(sources: list[ModelSpec | str]) -> list[str]:
    """One short, unique label per source: a registry model's name; for a file, the last k parts of its
    path, with the smallest k that tells all files apart and from the names (`deploy.pt`,
    `run1/deploy.pt`). Sources are distinct (`jobs.benchmark.resolve_models` refuses one listed twice)."""
    names = [s.name for s in sources if isinstance(s, ModelSpec)]
    paths = [Path(os.path.abspath(s)).parts for s in sources if not isinstance(s, ModelSpec)]
    tails: list[str] = []
    for k in range(1, max(map(len, paths), default=1) + 1):
        tails = [os.path.join(*p[-k:]) for p in paths]
        if len(set(tails)) == len(tails) and not set(tails) & set(names):
            break
    files = iter(tails)
    return [s.name if isinstance(s, ModelSpec) else next(files) for s in sources]


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and spread ((max - min) / median) of the repeats."""
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / median if median else 0.0, "runs": values}


def _who(r: dict[str, Any]) -> str:
    return r["model"] if r["file"] is None else f"{r['model']} ({r['source']})"


def spread_warning(rows: list[dict[str, Any]]) -> str | None:
    """One line on the rows whose repeats spread wider than WIDE_SPREAD, naming the widest; None if none."""
    wide = [r for r in rows if r["wide_spread"]]
    if not wide:
        return None
    r = max(wide, key=lambda r: r["img_per_s"]["spread"])
    v = r["img_per_s"]
    return (f"warning: {len(wide)} of {len(rows)} rows have a wide spread (repeats' img/s differ by more than "
            f"{WIDE_SPREAD:.0%} of their median; widest {v['spread']:.0%}: {_who(r)} {r['form']} {r['runtime']} "
            f"batch {r['batch_size']}, {v['min']:.1f}-{v['max']:.1f} around {v['median']:.1f} img/s): the machine was "
            "busy; rerun on an idle one, or with more iters and repeats")


def _fmt_mib(memory: dict | None, key: str) -> str:
    return "" if not memory or memory.get(key) is None else f"{memory[key]:.1f}"


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else ""


def _best_lines(rows: list[dict]) -> list[str]:
    """Best plain against best residual-side (residual or bn_folded) form, per source, precision, batch
    and arithmetic (float runtimes; INT8)."""
    best: dict[tuple, dict[str, tuple[float, str]]] = {}
    who = {r["source"]: _who(r) for r in rows}
    for r in rows:
        kind = "float" if RUNTIMES[r["runtime"]].exact else "int8"
        side = "plain" if r["form"] == "plain" else "residual"
        key = (r["source"], r["precision"], r["batch_size"], kind)
        speed = r["img_per_s"]["median"]
        if speed > best.setdefault(key, {}).get(side, (0.0, ""))[0]:
            best[key][side] = (speed, f"{r['form']}, {r['runtime']}")
    lines = ["| model | precision | batch | arithmetic | best residual-side form | img/s | best plain | img/s "
             "| plain / residual |", "|" + " --- |" * 9]
    for (source, precision, batch, kind), sides in best.items():
        if len(sides) < 2:
            continue
        (res, res_where), (plain, plain_where) = sides["residual"], sides["plain"]
        lines.append(f"| {who[source]} | {precision} | {batch} | {kind} | {res_where} | {res:.1f} | {plain_where} | "
                     f"{plain:.1f} | {plain / res:.2f}x |")
    return lines if len(lines) > 2 else []


def _header(report: dict[str, Any], cuda_mem: bool) -> list[str]:
    env, s = report["environment"], report["settings"]
    versions = f"torch {env['torch']}" + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env["cuda"] else "")
    versions += "".join(f", {k} {env[k]}" for k in ("onnxruntime",) if env.get(k))
    runtimes = ", ".join(f"{r} ({s['compile_mode']})" if r == "compile" else r for r in s["runtimes"])
    files = [f"- `{src['source']}`: {src['file']} ({src['kind']} file, {src['spec']['name'] or 'plain model'} "
             f"{src['spec']['form']}, {src['input_size']}x{src['input_size']} input, "
             + (f"data config {src['data_config'].get('name')})" if src["data_config"] else "no data config)")
             for src in report["sources"] if src["file"]]
    return [
        f"# Inference benchmark ({env['date'][:10]})", "",
        f"- Device: {env['device_name']}; {versions}; commit {env['git_commit']}"
        + (f"; load average {load:.1f} at the start" if (load := env.get("load_average_1min")) is not None else ""),
        f"- Precision {', '.join(s['precisions'])}, channels_last {s['channels_last']}; runtimes {runtimes}; "
        f"{s['threads']} torch threads; {s['warmup']} warm-up + {s['iters']} timed iterations, {s['repeats']} repeats "
        "interleaved over forms and runtimes (median, min-max)",
        f"- Command: `{env['command']}`",
        *[f"- Note: {n}" for n in s["notes"]], *files, "",
        "| model | batch | precision | runtime | form | params (M) | GMACs | img/s | min-max | ms/batch "
        "| vs residual | vs eager | act. mem MiB (lifetimes) |" + (" CUDA peak MiB |" if cuda_mem else "")
        + " load | max rel err vs fp32 |",
        "|" + " --- |" * (15 + cuda_mem),
    ]


def _row_cells(r: dict[str, Any], speed: dict[tuple, float], cuda_mem: bool) -> list[Any]:
    img_s = r["img_per_s"]
    at = (r["source"], r["precision"], r["batch_size"])
    cells = [_who(r), r["batch_size"], r["precision"], r["runtime"], r["form"], f"{r['params'] / 1e6:.2f}",
             f"{r['macs'] / 1e9:.3f}", f"{img_s['median']:.1f}",
             f"{img_s['min']:.1f}-{img_s['max']:.1f}" + (" (wide)" if r["wide_spread"] else ""),
             f"{r['latency_ms']['median']:.2f}", _ratio(img_s["median"], speed.get((*at, r["runtime"], "residual"))),
             _ratio(img_s["median"], speed.get((*at, "eager", r["form"]))), _fmt_mib(r["memory"], "lifetime_peak_mib")]
    if cuda_mem:
        cells.append(_fmt_mib(r["memory"], "cuda_peak_mib"))
    cells.append("" if r["load_average_1min"] is None else f"{r['load_average_1min']:.1f}")
    cells.append(f"{r['check']['max_rel']:.1e}" if r["check"] else "")
    return cells


def _details(rows: list[dict[str, Any]]) -> list[str]:
    """The fidelity table, INT8 and export lines of `rows`, one entry per source."""
    lines = []
    # Measured once per (runtime, form, precision) and copied to the rows of every batch size.
    fidelity = {(r["source"], r["form"], r["runtime"], r["precision"]): r for r in rows if r["fidelity"]}
    if fidelity:
        lines += ["", "Validation top-1 of the lossy rows against the same form in eager fp32:", "",
                  "| model | form | runtime | precision | top-1 % | eager fp32 top-1 % | delta | agreement % | images |",
                  "|" + " --- |" * 9]
        lines += [f"| {_who(r)} | {r['form']} | {r['runtime']} | {r['precision']} | {v['top1']:.2f} | "
                  f"{v['top1_reference']:.2f} | {v['delta']:+.2f} | {v['agreement']:.2f} | {v['images']} |"
                  for r in fidelity.values() if (v := r["fidelity"])]
    int8 = {(_who(r), r["form"]): r["int8"] for r in rows if r["int8"]}
    if int8:
        lines.append("")
        lines += [f"INT8 {who} {form}: lowest weight SQNR {v['min_weight_sqnr_db']:.1f} dB; layers kept in float: "
                  f"{', '.join(v['kept_float']) or 'none'}" for (who, form), v in int8.items()]
    exports = {(_who(r), kind): e for r in rows if r["export"] for kind, e in r["export"].items()}
    if exports:
        lines.append("")
        lines += [f"Export {kind} of {who} plain: `{e['path']}`, output vs PyTorch max rel error "
                  f"{e['max_rel']:.1e} ({e['runtime']})" for (who, kind), e in exports.items()]
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    s, results = report["settings"], report["results"]
    cuda_mem = any(r["memory"] and r["memory"]["cuda_peak_mib"] is not None for r in results)
    lines = _header(report, cuda_mem)
    speed = {(r["source"], r["precision"], r["batch_size"], r["runtime"], r["form"]): r["img_per_s"]["median"]
             for r in results}
    order = {source: i for i, source in enumerate(dict.fromkeys(r["source"] for r in results))}
    rows = sorted(results, key=lambda r: (order[r["source"]], s["precisions"].index(r["precision"]),
                                          r["batch_size"], s["runtimes"].index(r["runtime"]),
                                          FORMS.index(r["form"])))
    lines += ["| " + " | ".join(str(c) for c in _row_cells(r, speed, cuda_mem)) + " |" for r in rows]
    if any(r["wide_spread"] for r in rows):
        lines += ["", f"(wide): the repeats' img/s differ by more than {s['wide_spread']:.0%} of their median; "
                  "the machine was busy while they ran, and the row's ratios are no better than that spread."]
    best = _best_lines(rows)
    if best:
        lines += ["", "Fastest plain against fastest residual or BN-folded form, per arithmetic (float runtimes; "
                  "INT8), from the table above:", "", *best]
    lines += _details(rows)
    memory = next((r["memory"] for r in results if r["memory"]), None)
    if memory:
        lines += ["", f"Activation memory (lifetimes): {memory['lifetime_method']}."]
        if memory["cuda_method"]:
            lines.append(f"CUDA peak: {memory['cuda_method']}.")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], markdown: str, out_dir: str, name: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown)
    return base + ".md", base + ".json"
