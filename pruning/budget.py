"""Budgets users compare: a cost (`kind`: MACs, params or latency in a deploy runtime) and whose cost
the fraction applies to (`of`): `residual`, the same absolute budget for both forms (a fraction of
the residual model's cost), or `own`, each form's own cost (the authors' per-form rule: the RM form
of MobileNetV2 costs more than MobileNetV2, so at one fraction it keeps more MACs).

    budget: {kind: macs, of: residual, runtime: onnxruntime, batch_size: 1}

Costs are those of the deploy form (BN folded), as the reports give them. A latency budget times
the model with a per-layer table (`bench.latency.LatencyTable`, imported when the kind is chosen):
each layer shape is measured once per runtime and batch and cached, and the table is reported.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from bench.forms import fold_bn
from models.complexity import count_macs, count_params

KINDS = ("macs", "params", "latency")
OFS = ("residual", "own")
RUNTIMES = ("onnxruntime", "onnxruntime_int8", "eager", "cuda")
UNITS = {"macs": "MACs", "params": "params", "latency": "ms"}


def check_budget(b: Any, section: str, kinds: tuple[str, ...] = KINDS) -> None:
    """`<section>.budget`, before any work; `kinds`: those the pruner can select channels under."""
    if b.kind not in kinds:
        raise ValueError(f"{section}.budget.kind={b.kind!r}: choose from {', '.join(kinds)}")
    if b.of not in OFS:
        raise ValueError(f"{section}.budget.of={b.of!r}: choose from {', '.join(OFS)}")
    if b.kind == "latency":
        if b.runtime not in RUNTIMES:
            raise ValueError(f"{section}.budget.runtime={b.runtime!r}: choose from {', '.join(RUNTIMES)}")
        if not isinstance(b.batch_size, int) or b.batch_size < 1:
            raise ValueError(f"{section}.budget.batch_size must be a positive integer, got {b.batch_size!r}")


def latency_table(runtime: str, batch_size: int) -> Any:
    """The per-layer latency table of `runtime` (imported here: only a latency budget needs it)."""
    from bench.latency import LatencyTable
    return LatencyTable(runtime=runtime, batch_size=batch_size)


@dataclass
class Budget:
    """A fraction `keep` of a cost; `cost(model)` measures it on the deploy form at `input_size`."""
    kind: str
    of: str
    keep: float
    input_size: int
    table: Any = field(default=None, repr=False)   # the latency table (kind latency)

    @classmethod
    def from_cfg(cls, b: Any, keep: float, input_size: int) -> Budget:
        table = latency_table(str(b.runtime), int(b.batch_size)) if b.kind == "latency" else None
        return cls(str(b.kind), str(b.of), float(keep), int(input_size), table)

    def cost(self, model: nn.Module) -> float:
        if self.kind == "macs":   # shapes alone decide MACs (BN folding changes none): count on `meta`, no arithmetic
            return count_macs(copy.deepcopy(model).to("meta").eval(), self.input_size)
        deploy = fold_bn(copy.deepcopy(model).float().cpu().eval())
        if self.kind == "params":
            return count_params(deploy)
        return float(self.table.model_ms(deploy, self.input_size))

    def target(self, residual_cost: float, own_cost: float) -> float:
        """The absolute cost a form may keep."""
        return self.keep * (residual_cost if self.of == "residual" else own_cost)

    def text(self) -> str:
        """The budget in words, the same for both forms when `of` is residual."""
        whose = "the residual model's" if self.of == "residual" else "its own"
        return f"keep {self.keep:g} of {whose} {UNITS[self.kind] if self.kind != 'latency' else 'latency'}"

    def report(self, model: nn.Module | None = None) -> dict[str, Any]:
        """The budget's settings; for latency the table, and its sum against the whole `model`'s time
        (`check`: sum_ms, whole_ms, ratio)."""
        out: dict[str, Any] = {"kind": self.kind, "of": self.of, "keep": self.keep}
        if self.table is not None:
            if model is not None:
                out["check"] = self.table.check(fold_bn(copy.deepcopy(model).float().cpu().eval()), self.input_size)
            out["latency_table"] = self.table.to_markdown()
        return out


def search(prune: Callable[[float | list[float]], Any], cost: Callable[[nn.Module], float],
           scores: list[torch.Tensor], target: float) -> tuple[Any, float]:
    """The pruning that keeps the most channels while costing at most `target`. `prune(threshold)`
    keeps, in each scored layer, the channels scoring >= its threshold (one for all, or one per
    entry of `scores`), rounded up to the pruner's channel_round; cost falls as thresholds rise.
    First the lowest global threshold within budget (a bisection over the distinct scores), then
    `fill` spends what is left. Returns (result, its cost); the highest threshold's when even that
    is over budget (the caller flags it)."""
    grid = sorted(set(torch.cat([s.flatten() for s in scores]).tolist()))
    lo, hi = 0, len(grid) - 1          # invariant: grid[hi] is within budget (or nothing is)
    best = prune(grid[hi])
    best_cost = cost(best.model)
    if best_cost > target:
        return best, best_cost
    while lo < hi:
        mid = (lo + hi) // 2
        result = prune(grid[mid])
        c = cost(result.model)
        if c <= target:
            hi, best, best_cost = mid, result, c
        else:
            lo = mid + 1
    return fill(prune, cost, scores, target, [grid[hi]] * len(scores), (best, best_cost))


def fill(prune: Callable[[list[float]], Any], cost: Callable[[nn.Module], float], scores: list[torch.Tensor],
         target: float, thresholds: list[float], start: tuple[Any, float]) -> tuple[Any, float]:
    """Spend the budget a global threshold leaves: with channel_round > 1 the next threshold down
    adds a whole block of channels to some layer, which may overshoot by several percent while
    a block elsewhere still fits. Greedily, best score first, lower one layer's threshold to its
    best channel not yet kept (the pruners keep a layer's top scores, `result.layers[k]["kept"]` of
    them) while the model stays within `target`; a layer that no longer fits never fits again
    (adding channels elsewhere only widens its neighbours)."""
    best, best_cost = start
    ranked = [s.flatten().sort(descending=True).values for s in scores]
    open_ = set(range(len(scores)))
    while open_:
        kept = [layer["kept"] for layer in best.layers]
        below = {k: ranked[k][kept[k]:] for k in open_}
        below = {k: b[b < thresholds[k]] for k, b in below.items()}   # strictly lower: each step moves
        order = sorted((float(b[0]), k) for k, b in below.items() if b.numel())
        open_ &= {k for _, k in order}
        for score, k in reversed(order):
            trial = [score if j == k else t for j, t in enumerate(thresholds)]
            result = prune(trial)
            c = cost(result.model)
            if c <= target:
                thresholds, best, best_cost = trial, result, c
                break
            open_.discard(k)
        else:
            break
    return best, best_cost
