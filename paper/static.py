"""Regenerate the static columns (parameters, FLOPs) of the paper's tables and compare them with
the printed values.

FLOPs follow the paper's rule (`models.complexity.paper_flops`). Models are built on the meta
device, so every row is counted in seconds without allocating weights. A value agrees with the
paper when it is within 0.5% of the printed number, or when it equals the printed number at the
printed precision: the authors' README prints one decimal and sometimes rounds (8.594 -> 8.6),
sometimes truncates (4.472 -> 4.4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
import torchvision
from tqdm import tqdm

import models
import rm
from models.complexity import count_params, paper_flops

from .printed import DEPLOY, DEPLOY_BN, TRAIN, Row

REL_TOL = 5e-3
MATCH, DOCUMENTED, MISMATCH, NO_MODEL = "match", "documented", "MISMATCH", "no model"
MISSING = "model missing"  # the row names a model that is not registered (yet)
_SCALE = {"M": 1e6, "G": 1e9}


@dataclass(frozen=True)
class Counts:
    params: int
    flops: int


@dataclass
class CheckResult:
    column: str
    form: str
    unit: str
    printed: str
    ours: float | None
    rel_diff: float | None
    criterion: str  # "0.5%", "printed digits", or "" when it does not agree


@dataclass
class RowResult:
    row: Row
    status: str
    forms: dict[str, Counts] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    reason: str = ""


def agreement(ours: float, printed: str) -> str:
    """How `ours` agrees with the printed string: "0.5%", "printed digits", or "" (it does not)."""
    value = float(printed)
    if abs(ours - value) <= REL_TOL * abs(value):
        return "0.5%"
    scale = 10 ** len(printed.partition(".")[2])
    target = round(value * scale)
    if round(ours * scale) == target or math.floor(ours * scale) == target:
        return "printed digits"
    return ""


def build(row: Row) -> nn.Module:
    """The row's model on the meta device, in eval mode (shapes only, no weights allocated)."""
    with torch.device("meta"):
        if row.model.startswith("torchvision."):
            model = getattr(torchvision.models, row.model.partition(".")[2])(num_classes=row.num_classes)
        else:
            model = models.create_model(row.model, num_classes=row.num_classes, stem=row.stem)
    return model.eval()


def count_forms(row: Row, forms: Iterable[str]) -> dict[str, Counts]:
    size = models.INPUT_SIZE[row.stem]
    model = build(row)
    out = {}
    for form in forms:
        net = model if form == TRAIN else rm.convert(model, fuse_bn=form != DEPLOY_BN)
        out[form] = Counts(count_params(net), paper_flops(net, size))
    return out


def check_row(row: Row) -> RowResult:
    if row.model is None:
        return RowResult(row, NO_MODEL, reason=row.note)
    if not row.model.startswith("torchvision.") and row.model not in models.list_models():
        return RowResult(row, MISSING, reason=f"model {row.model!r} is not registered; "
                                              "`python -m models` lists the registered ones")
    # Documented rows show both forms, so the report says what each form gives.
    forms = dict.fromkeys([c.form for c in row.checks] + ([TRAIN, DEPLOY] if row.documented else []))
    result = RowResult(row, MATCH, count_forms(row, forms))
    for check in row.checks:
        counts = result.forms[check.form]
        ours = (counts.params if check.column == "params" else counts.flops) / _SCALE[check.unit]
        printed = float(check.printed)
        result.checks.append(CheckResult(check.column, check.form, check.unit, check.printed, ours,
                                         (ours - printed) / printed, agreement(ours, check.printed)))
    if row.documented:
        result.status = DOCUMENTED
    elif not all(c.criterion for c in result.checks):
        result.status = MISMATCH
    return result


def check_rows(rows: Iterable[Row], progress: bool = True) -> list[RowResult]:
    rows = list(rows)
    return [check_row(row) for row in tqdm(rows, desc="counting", unit="row", disable=None if progress else True)]


def failures(results: Iterable[RowResult]) -> list[RowResult]:
    """Rows that disagree with the paper without being a documented paper inconsistency, or whose
    model is missing."""
    return [r for r in results if r.status in (MISMATCH, MISSING)]
