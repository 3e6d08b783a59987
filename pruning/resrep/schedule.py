"""The mask schedule (ResRep §3.4; the authors' `resrep_mask_model`).

Every channel of every compacted layer is ranked by the norm of its compactor row, across layers.
The mask is the shortest prefix of that ranking whose removal makes the folded model meet the
target (`cost`: MACs, params or latency, `fold.folded_cost`); while the current mask does not yet meet it, the mask may grow by at most `granularity`
channels per update, so the network adapts a few channels at a time. A layer never loses its last
channel: the prefix skips a layer's channel that would be its last (the authors' `num_at_least=1`).
The mask is recomputed from the ranking each time, so a channel whose row regrows may leave it;
masked rows decay to zero under gradient resetting and stay at the front.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .layout import CompactorLayout, resolve


class _Ranking:
    """Masks of the prefixes of the global ranking of channels by row norm."""

    def __init__(self, norms: list[torch.Tensor]):
        self.norms = norms
        self.sizes = [len(n) for n in norms]
        flat = torch.cat(norms)
        order = flat.argsort(stable=True)
        self.rank = torch.empty_like(order)
        self.rank[order] = torch.arange(len(flat))
        parts = self.rank.split(self.sizes)
        self.last = torch.stack([p.max() for p in parts])          # each layer's strongest channel's rank
        self.strongest = [int(p.argmax()) for p in parts]

    def __len__(self) -> int:
        return len(self.rank)

    def masks(self, i: int) -> list[torch.Tensor]:
        """Masked channels per layer when the first `i` of the ranking go (a layer's last one stays)."""
        masks = list((self.rank < i).split(self.sizes))
        for k in torch.nonzero(self.last < i).flatten().tolist():
            masks[k] = masks[k].clone()
            masks[k][self.strongest[k]] = False
        return masks

    def count(self, i: int) -> int:
        return i - int((self.last < i).sum())


def _first(lo: int, hi: int, ok) -> int:
    """The smallest i in [lo, hi] with ok(i) (ok monotone: False...True); hi when none."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def next_masks(layout: CompactorLayout, norms: list[torch.Tensor], masked: list[torch.Tensor], target: float,
               granularity: int, cost: Callable[[list[torch.Tensor]], float]) -> list[torch.Tensor]:
    """The new masks (True: the row is pruned) of the layers of `layout`, from the row norms and the
    current masks; `cost` prices kept channels (`layout.macs` for a MACs target)."""
    ranking = _Ranking(norms)

    def priced(masks: list[torch.Tensor]) -> float:
        return cost(resolve(layout.slots, [~m for m in masks], norms))

    n = len(ranking)
    enough = _first(0, n, lambda i: priced(ranking.masks(i)) <= target)
    if priced(masked) > target:   # still short of the target: a few more channels at a time
        cap = sum(int(m.sum()) for m in masked) + granularity
        enough = min(enough, _first(0, n, lambda i: ranking.count(i + 1) > cap))
    return ranking.masks(enough)
