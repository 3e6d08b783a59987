"""ResRep training as a trainer hook: `hooks.resrep` (the model must hold compactors).

* Optimizer: compactors get their own group, without weight decay and with momentum 0.99 (the
  authors' `compactor_momentum`, `weight_decay_on_compactor=False`).
* Gradient resetting (`after_backward`): on the rows of masked channels the objective's gradient is
  replaced by the group-lasso gradient lasso * F / ||F|| (F the row), so they decay to zero while the
  other rows keep learning from the objective alone. `penalty_rows=all` adds the lasso gradient to
  every row, as the paper's update rule and the authors' code do (the issue asks for masked rows only,
  the default).
* Mask schedule (`after_step`): from `start_epochs` on, every `interval` optimizer steps
  (`schedule.next_masks`), towards `target`, the cost of the folded model in `kind`: macs, params or
  latency (ms in `runtime` at `batch_size`, the per-layer table of `bench.latency`: `fold.folded_cost`).
  A latency is measured in each process, so it is refused in a distributed run, whose processes must
  agree on the masks.
The masks are the hook's state (`state_dict`): a checkpoint holds them under "hooks" -> "resrep" and
a resumed run goes on with them; `load_masks` reads them from a finished run's checkpoint.
"""
from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

import engine.distributed as D
from engine.hooks import Hook, register_hook

from ..budget import Budget, check_budget
from ..cost import amount
from .compactor import Compactor, compactors
from .fold import folded_cost
from .layout import CompactorLayout, resolve
from .schedule import next_masks

log = logging.getLogger("rmnet.train")
PENALTY_ROWS = ("masked", "all")


@torch.no_grad()
def reset_gradient(compactor: Compactor, lasso: float, all_rows: bool = False) -> None:
    """Gradient resetting of one compactor's weight gradient (in place)."""
    rows = compactor.weight.flatten(1)
    grad = compactor.weight.grad.view(rows.shape)
    norms = rows.norm(dim=1, keepdim=True)
    penalty = lasso * torch.where(norms > 0, rows / norms.clamp_min(torch.finfo(rows.dtype).tiny), 0)
    masked = compactor.mask == 0
    grad[masked] = penalty[masked]
    if all_rows:
        grad[~masked] += penalty[~masked]


def set_masks(found: list[Compactor], masks: list[torch.Tensor]) -> None:
    """Copy saved masks (the hook's state) into the compactors, which must be the ones they were saved from."""
    if [len(m) for m in masks] != [len(c.mask) for c in found]:
        raise ValueError(f"the saved resrep masks ({len(masks)} compactors) do not fit this model's "
                         f"{len(found)} compactors")
    for c, m in zip(found, masks):
        c.mask.copy_(m)


def load_masks(model: nn.Module, checkpoint: dict[str, Any]) -> None:
    """The masks of a run with the resrep hook, from its checkpoint (already loaded with torch.load),
    into `model`'s compactors; a checkpoint from when they were buffers brought them with its weights."""
    state = (checkpoint.get("hooks") or {}).get("resrep")
    if state is not None:
        set_masks(compactors(model), state["masks"])


@register_hook("resrep")
class ResRepHook(Hook):
    def __init__(self, target: float, lasso: float = 1e-4, penalty_rows: str = "masked", interval: int = 200,
                 start_epochs: float = 5.0, granularity: int = 4, compactor_momentum: float | None = 0.99,
                 kind: str = "macs", runtime: str = "onnxruntime", batch_size: int = 1):
        if not target > 0:
            raise ValueError(f"resrep target must be positive, got {target}")
        self.budget = types.SimpleNamespace(kind=kind, of="own", runtime=runtime, batch_size=batch_size)
        check_budget(self.budget, "hooks.resrep")
        if kind == "latency" and D.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            raise ValueError("a resrep latency budget is measured in each process, whose masks must agree: run "
                             "it in one process, or use budget.kind=macs or params")
        if lasso < 0:
            raise ValueError(f"resrep lasso must be >= 0, got {lasso}")
        if penalty_rows not in PENALTY_ROWS:
            raise ValueError(f"resrep penalty_rows must be one of {', '.join(PENALTY_ROWS)}, got {penalty_rows!r}")
        if not (isinstance(interval, int) and interval >= 1 and isinstance(granularity, int) and granularity >= 1):
            raise ValueError(f"resrep interval and granularity must be positive integers, got {interval}, "
                             f"{granularity}")
        if start_epochs < 0:
            raise ValueError(f"resrep start_epochs must be >= 0, got {start_epochs}")
        self.target, self.lasso, self.all_rows = float(target), float(lasso), penalty_rows == "all"
        self.interval, self.start_epochs, self.granularity = interval, float(start_epochs), granularity
        self.compactor_momentum = compactor_momentum
        self.layout: CompactorLayout | None = None
        self.cost: Callable[[list[torch.Tensor]], float] | None = None   # built with the layout
        self.compactors: list[Compactor] = []   # the trained model's, in model order (param_groups)

    def param_groups(self, model: nn.Module) -> list[dict]:
        self.compactors = compactors(model)
        params = [c.weight for c in self.compactors]
        if not params:
            raise ValueError("the resrep hook trains compactors, and the model has none: put them in with "
                             "pruning.resrep.add_compactors (resrep.py does)")
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0}
        if self.compactor_momentum is not None:
            group["momentum"] = float(self.compactor_momentum)
        return [group]

    def state_dict(self) -> dict[str, Any]:
        return {"masks": [c.mask.detach().cpu().clone() for c in self.compactors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_masks(self.compactors, state["masks"])

    def after_backward(self, model: nn.Module) -> None:
        for c in compactors(model):
            if c.weight.grad is not None:
                reset_gradient(c, self.lasso, self.all_rows)

    def after_step(self, trainer: Any) -> None:
        since = trainer.step - round(self.start_epochs * trainer.steps_per_epoch)
        if since > 0 and since % self.interval == 0:
            self.update(trainer.model, trainer.spec.input_size, trainer.step)

    @torch.no_grad()
    def update(self, model: nn.Module, input_size: int, step: int) -> None:
        if self.layout is None:
            self.layout = CompactorLayout(model, input_size)
            self.cost = folded_cost(self.layout, model, Budget.from_cfg(self.budget, 1.0, input_size))
        found = [s.compactor for s in self.layout.slots]
        norms = [c.row_norms() for c in found]
        before = [c.masked() for c in found]
        masks = next_masks(self.layout, norms, before, self.target, self.granularity, self.cost)
        for c, m in zip(found, masks):
            c.mask.copy_((~m).to(c.mask))
        if any(not torch.equal(a, b) for a, b in zip(before, masks)):
            cost = self.cost(resolve(self.layout.slots, [~m for m in masks], norms))
            log.info(f"resrep step {step}: {sum(int(m.sum()) for m in masks)} of {sum(len(n) for n in norms)} "
                     f"channels masked; the pruned model would cost {amount(cost, self.budget.kind)} (target "
                     f"{amount(self.target, self.budget.kind)})")
