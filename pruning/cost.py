"""A pruner's cost over its choice of widths, in the budget's kind (`pruning.budget.Budget`), for the
pruners that try thousands of choices without building a model (AMC's environment, ResRep's mask
schedule).

The pruner's structure (AMC's `Graph`, ResRep's `Layout`) says, for a choice, the widths (inputs,
outputs, groups) of every conv and Linear of the deploy form that the choice resizes. The cost is
the budget's cost of the full-width deploy form (BN folded) with each resized layer's full-width
price replaced by its price at the new widths: MACs (the structure's own exact count), params
(weights and the folded bias), or latency (the latency table's ms of a conv(+ReLU) or Linear of
that shape at the table's runtime and batch, measured once per shape and cached by the table, as
the whole model's are). Layers no choice resizes keep their full-width price; where such a layer
reads pruned channels (a pool before the head, an activation not fused with its conv), that price is
the full width's, so the cost is then an upper bound of the pruned model's. Per-channel PReLUs are
resized layers too (their slopes are params; not fused, they are layers of the latency table).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from bench.forms import fold_bn

from .budget import UNITS, Budget
from .report import mega

Widths = tuple[int, int, int]   # inputs (features of a Linear), outputs, groups (a PReLU: c, c, 1)


def amount(value: float, kind: str, unit: bool = True) -> str:
    """A cost as the reports write it: '1.235 M MACs', '0.012 M params', '0.532 ms' (`unit` False:
    without the unit after the millions, for a table whose header says it)."""
    if kind == "latency":
        return f"{value:.3f} ms"
    return mega(value) + (f" {UNITS[kind]}" if unit else "")


def kind_suffix(b: Any) -> str:
    """The part of a run folder's name that a budget's kind adds (none for MACs, the default), so runs
    under other kinds (and latency runtimes and batches) never resume each other's state."""
    if b.kind == "macs":
        return ""
    return f"-{b.kind}" + (f"-{b.runtime}-b{b.batch_size}" if b.kind == "latency" else "")


def width_cost(budget: Budget, model: nn.Module, widths: Callable[[Any], dict[str, Widths]], full: Any,
               macs: Callable[[Any], float]) -> Callable[[Any], float]:
    """The cost of a choice in `budget.kind`: `macs` for MACs, else a `WidthCost` of `model` (the
    full-width model, BN kept or folded) whose layers `widths(choice)` resizes (`full`: the choice
    that keeps every channel)."""
    return macs if budget.kind == "macs" else WidthCost(budget, model, widths, full)


def resized(module: nn.Module, widths: Widths) -> nn.Module:
    """`module` (a conv, Linear or PReLU) at other widths, on the meta device (its settings, no weights)."""
    cin, cout, groups = widths
    if isinstance(module, nn.PReLU):
        return nn.PReLU(cin, device="meta")
    if isinstance(module, nn.Linear):
        return nn.Linear(cin, cout, module.bias is not None, device="meta")
    return nn.Conv2d(cin, cout, module.kernel_size, module.stride, module.padding, module.dilation, groups,
                     module.bias is not None, module.padding_mode, device="meta")


def params(module: nn.Module, widths: Widths) -> int:
    """Weights and bias of `module` at `widths`."""
    cin, cout, groups = widths
    if isinstance(module, nn.PReLU):
        return cin
    area = math.prod(module.kernel_size) if isinstance(module, nn.Conv2d) else 1
    return cout * (cin // groups) * area + (cout if module.bias is not None else 0)


class WidthCost:
    """cost(choice) = the full deploy form's cost - the resized layers' full prices + their prices at
    the choice's widths (params or latency; each price computed once per layer and widths)."""

    def __init__(self, budget: Budget, model: nn.Module, widths: Callable[[Any], dict[str, Widths]], full: Any):
        deploy = fold_bn(copy.deepcopy(model).float().cpu().eval())
        self.modules, self.widths, self.table = dict(deploy.named_modules()), widths, budget.table
        if budget.kind == "latency":
            from bench.latency import layers
            t = self.table
            self.layers = {layer.name: layer
                           for layer in layers(deploy, budget.input_size, t.batch_size, t.runtime, t.threads)}
        self.price = self._ms if budget.kind == "latency" else (lambda name, w: params(self.modules[name], w))
        self.prices: dict[tuple[str, Widths], float] = {}
        self.fixed = budget.cost(deploy) - self._sum(widths(full))

    def __call__(self, choice: Any) -> float:
        return self.fixed + self._sum(self.widths(choice))

    def _sum(self, widths: dict[str, Widths]) -> float:
        total = 0.0
        for name, w in widths.items():
            if (name, w) not in self.prices:
                self.prices[name, w] = self.price(name, w)
            total += self.prices[name, w]
        return total

    def _ms(self, name: str, widths: Widths) -> float:
        layer = self.layers[name]
        shape = (layer.shape[0], widths[0], *layer.shape[2:])
        return self.table.module_ms(resized(self.modules[name], widths), shape, layer.kind.endswith("+relu"))
