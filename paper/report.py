"""Markdown and JSON renderings of the static-column check (`paper.static`)."""
from __future__ import annotations

from itertools import groupby
from typing import Iterable

from .static import DOCUMENTED, MATCH, MISMATCH, MISSING, RowResult

_SCALE = {"M": 1e6, "G": 1e9}
_MEASURED = {"top1": "Top-1 (%)", "top5": "Top-5 (%)", "img/s": "img/s"}
NOT_MEASURED = "not yet measured"


def _cell(printed: str, ours: float | None) -> str:
    if ours is None:
        return f"{printed} / -"
    decimals = max(2, len(printed.partition(".")[2]) + 1)
    return f"{printed} / {ours:.{decimals}f}"


def _status(result: RowResult) -> str:
    if result.status == MATCH:
        return "✓ (" + ", ".join(sorted({c.criterion for c in result.checks})) + ")"
    return {DOCUMENTED: "documented inconsistency", MISMATCH: "**MISMATCH**",
            MISSING: "**model missing**"}.get(result.status, result.status)


def _table(results: list[RowResult]) -> list[str]:
    # A column printed for both forms in one row (the README's Train/Test FLOPs) is split by form.
    split = {c.column for r in results for c in r.row.checks
             if sum(o.column == c.column for o in r.row.checks) > 1}

    def key(check) -> tuple[str, str, str]:
        return check.column, check.form if check.column in split else "", check.unit

    keys = list(dict.fromkeys(key(c) for r in results for c in r.row.checks))
    measured = list(dict.fromkeys(m for r in results for m in r.row.measured))
    head = (["Dataset", "Backbone", "model", "counted as"]
            + [f"{'Params' if col == 'params' else 'FLOPs'}{' ' + form if form else ''} ({unit}) paper / ours"
               for col, form, unit in keys]
            + [_MEASURED[m] + " paper" for m in measured] + ["ours: accuracy, img/s", "check"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        printed = {key(c): c.printed for c in r.row.checks}
        ours = {key(c): c.ours for c in r.checks}
        cells = [r.row.dataset, r.row.label, f"`{r.row.model}`" if r.row.model else "-",
                 " + ".join(dict.fromkeys(c.form for c in r.row.checks))]
        cells += [_cell(printed[k], ours.get(k)) if k in printed else "" for k in keys]
        cells += [r.row.measured.get(m, "") for m in measured] + [NOT_MEASURED, _status(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _notes(results: list[RowResult]) -> list[str]:
    notes = []
    for r in results:
        if r.status == DOCUMENTED:
            unit = next((c.unit for c in r.row.checks if c.column == "flops"), "G")
            forms = "; ".join(f"{form} form {c.params / 1e6:.2f} M params / {c.flops / _SCALE[unit]:.2f} {unit}FLOPs"
                              for form, c in r.forms.items())
            notes.append(f"- {r.row.label}, {r.row.dataset}: {r.row.note}. Ours: {forms}.")
        elif r.status in (MISMATCH, MISSING):
            notes.append(f"- {r.row.label}, {r.row.dataset}: {r.reason or 'differs from the printed value'}.")
    shared = {r.row.note for r in results if r.status == MATCH and r.row.note}
    return notes + [f"- {n}." for n in sorted(shared)]


def to_markdown(results: Iterable[RowResult]) -> str:
    out = []
    for table, group in groupby(results, key=lambda r: r.row.table):
        group = list(group)
        out += [f"### {table}", ""] + _table(group) + [""]
        notes = _notes(group)
        if notes:
            out += notes + [""]
    return "\n".join(out)


def to_json(results: Iterable[RowResult]) -> list[dict]:
    return [{
        "table": r.row.table, "dataset": r.row.dataset, "backbone": r.row.label, "model": r.row.model,
        "status": r.status, "note": r.row.note, "reason": r.reason,
        "forms": {form: {"params": c.params, "flops": c.flops} for form, c in r.forms.items()},
        "checks": [vars(c) for c in r.checks],
        "paper_measured": r.row.measured,
    } for r in results]
