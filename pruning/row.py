"""The comparison row: one pruned model as every pruner's report writes it (`rows` of report.json)
and `python -m pruning.compare` reads it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    method: str                  # slimming | amc | resrep
    form: str                    # residual | rm (pruning.common.FORMS)
    model: str
    data: str
    budget: str                  # what the run was asked for, in words (the same text for both forms)
    target: float | None         # the absolute cost the budget allows (budget_kind units); None: a criterion
    params: int
    macs: int
    top1_before: float | None
    top1_pruned: float | None
    top1_finetuned: float | None
    img_s: float                 # eager PyTorch, the report's bench settings
    artifact: str
    flag: str | None             # what the model missed (pruned nothing, cost over target); None: nothing
    budget_kind: str = "macs"    # macs | params | latency ('criterion' for slimming's threshold/ratio)
    speeds: dict[str, float] = field(default_factory=dict)   # img/s per deploy runtime (bench.runtimes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        """A row of a report; rows of older reports (no budget, `target` in each method's own sense,
        perhaps no flag) read with their target as the budget text."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "budget" not in d:
            d["budget"], d["target"] = str(d.get("target")), None
        d.setdefault("flag", None)
        return cls(**d)

    @property
    def top1(self) -> float | None:
        """The final top-1: fine-tuned when the run fine-tuned, else pruned."""
        return self.top1_finetuned if self.top1_finetuned is not None else self.top1_pruned


FIELDS = tuple(f.name for f in dataclasses.fields(Row))
