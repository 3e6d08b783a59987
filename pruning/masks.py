"""Which channels to keep: thresholds, global ratios and the group structure of grouped convs.

A channel is kept when its score (|BN scale|) is >= the threshold (one for all layers, or one per
scored layer). A grouped conv then needs every
group it keeps to keep equally many inputs and outputs; it may drop a whole group when all of the
group's outputs go, and then the group's inputs are unused and go too (exactly). So for a grouped
conv the kept groups are those with a wanted output, and each kept group keeps its top-k outputs
and inputs by score, k the largest wanted count of any kept group (some channels under the
threshold stay to keep the shape valid). Every layer keeps at least one channel.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def global_threshold(scores: list[torch.Tensor], ratio: float) -> float:
    """Threshold that removes the `ratio` fraction of channels with the smallest scores."""
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    flat = torch.cat([s.flatten() for s in scores]).sort().values
    k = int(round(ratio * flat.numel()))
    return 0.0 if k == 0 else float(flat[k])


def per_layer(threshold: float | Sequence[float], n: int) -> list[float]:
    """One threshold for each of `n` scored layers: a global one repeated, or the budget search's own
    per layer (`budget.search` lowers single layers' thresholds to spend what rounding left over)."""
    if isinstance(threshold, (int, float)):
        return [float(threshold)] * n
    if len(threshold) != n:
        raise ValueError(f"{len(threshold)} thresholds for {n} scored layers")
    return [float(t) for t in threshold]


def keep_at_least_one(keep: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    if bool(keep.any()):
        return keep
    keep = keep.clone()
    keep[score.argmax()] = True
    return keep


CHANNEL_ROUNDS = (1, 4, 8, 16)


def round_up(keep: torch.Tensor, score: torch.Tensor, multiple: int) -> torch.Tensor:
    """`keep` grown to the next multiple of `multiple` kept channels (or the full width), adding the
    best-scoring removed channels: hardware-friendly widths, and the fold stays exact (the added
    channels are kept, not approximated)."""
    keep = keep_at_least_one(keep, score)
    n = min(keep.numel(), -(-int(keep.sum()) // multiple) * multiple)
    if n == int(keep.sum()):
        return keep
    out = torch.zeros_like(keep)
    out[torch.where(keep, torch.inf, score.double()).topk(n).indices] = True
    return out


def _top_k_per_group(score: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.zeros_like(score, dtype=torch.bool)
    idx = score.topk(k, dim=1).indices
    keep.scatter_(1, idx, True)
    keep[~alive] = False
    return keep.flatten()


def resolve_grouped(groups: int, keep_in: torch.Tensor, score_in: torch.Tensor, in_free: bool,
                    keep_out: torch.Tensor, score_out: torch.Tensor, out_free: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of a grouped conv's inputs and outputs made valid for its group structure.

    `*_free` says whether that side may change at all (False: it is the network input, the
    network output, or shared with another grouped conv, and keeps everything).
    """
    ko, so = keep_out.view(groups, -1), score_out.view(groups, -1)
    ki, si = keep_in.view(groups, -1), score_in.view(groups, -1)
    if in_free and out_free:
        alive = ko.any(1)
        if not bool(alive.any()):
            alive[so.max(1).values.argmax()] = True
    else:
        alive = torch.ones(groups, dtype=torch.bool)
    if out_free:
        keep_out = _top_k_per_group(so, alive, max(1, int(ko[alive].sum(1).max())))
    if in_free:
        keep_in = _top_k_per_group(si, alive, max(1, int(ki[alive].sum(1).max())))
    return keep_in, keep_out
