"""Network slimming of a plain chain (the output of `rm.convert(model, fuse_bn=False)`).

The chain is units of Conv2d -> BatchNorm2d -> [ReLU | PReLU], with pooling/Flatten between them
and a Linear head. Output channels of a unit are scored by |BN scale|; removed channels take out
the conv's output filter, the BN and PReLU entries and the next conv's (or the Linear's) input
slice, and their constant act(beta) is folded into the reader (see `surgery`). With no residual
additions left, every unit's channels are free: this is why RM raises the pruning ratio.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .masks import global_threshold, keep_at_least_one, per_layer, resolve_grouped, round_up
from .surgery import (
    PruneError,
    act_constant,
    conv_constant_response,
    slice_bn,
    slice_conv,
    slice_linear,
    slice_prelu,
)

# Modules that may sit between a unit and the layer reading it (see `_keeps_constant`).
_BETWEEN = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout,
            nn.Identity)


@dataclass
class _Unit:
    conv: int
    bn: int
    act: int | None
    exact_const: bool = True  # is a constant output channel folded exactly into the reader?


@dataclass
class PruneResult:
    model: nn.Module
    threshold: float | list[float]   # one, or one per scored layer (the budget search's)
    layers: list[dict] = field(default_factory=list)  # per conv: name, channels before/after, groups
    removed: int = 0  # channels removed
    total: int = 0  # prunable channels before pruning
    approximate: int = 0  # removed channels with a non-zero constant folded across zero padding

    @property
    def channel_ratio(self) -> float:
        return self.removed / max(self.total, 1)


def _keeps_constant(module: nn.Module) -> bool:
    """Does a constant channel stay the same constant through `module`? Not through an average
    pool that counts zero padding."""
    if isinstance(module, nn.AvgPool2d):
        return not (module.count_include_pad and any(p > 0 for p in nn.modules.utils._pair(module.padding)))
    return True


def parse_chain(model: nn.Sequential) -> tuple[list[_Unit], int | None]:
    """Units of the chain and the index of the Linear head (None when the chain ends in a conv unit)."""
    if not isinstance(model, nn.Sequential):
        raise PruneError(f"expected a plain nn.Sequential (rm.convert(model, fuse_bn=False)), got {type(model).__name__}")
    layers, units, i, head = list(model), [], 0, None
    while i < len(layers):
        m = layers[i]
        if isinstance(m, nn.Conv2d):
            if i + 1 >= len(layers) or not isinstance(layers[i + 1], nn.BatchNorm2d):
                raise PruneError(f"conv at layer {i} is not followed by BatchNorm2d: pruning ranks channels by "
                                 "BN scale, convert with rm.convert(model, fuse_bn=False)")
            if not layers[i + 1].affine:
                raise PruneError(f"BatchNorm2d at layer {i + 1} has no affine scale to rank channels by")
            act = i + 2 if i + 2 < len(layers) and isinstance(layers[i + 2], (nn.ReLU, nn.PReLU)) else None
            units.append(_Unit(i, i + 1, act))
            i = (act if act is not None else i + 1) + 1
        elif isinstance(m, _BETWEEN):
            if units and not _keeps_constant(m):
                units[-1].exact_const = False
            i += 1
        elif isinstance(m, nn.Linear):
            head = i
            break
        else:
            raise PruneError(f"layer {i} ({type(m).__name__}) is not part of a plain conv chain; expected Conv2d, "
                             "BatchNorm2d, ReLU/PReLU, pooling, Flatten or Linear")
    for unit, nxt in zip(units, units[1:]):
        conv = layers[nxt.conv]
        unit.exact_const = unit.exact_const and all(p == 0 for p in conv.padding)
    return units, head


def channel_scores(model: nn.Sequential) -> list[torch.Tensor]:
    """|BN scale| of every unit's output channels, in chain order."""
    units, _ = parse_chain(model)
    return [model[u.bn].weight.detach().abs().double().cpu() for u in units]


def _masks(model: nn.Sequential, units: list[_Unit], head: int | None, threshold: float | list[float],
           channel_round: int, scores: list[torch.Tensor]) -> list[torch.Tensor]:
    convs = [model[u.conv] for u in units]
    # Output channels are free unless they are the network output or sit between two grouped convs.
    free = [k + 1 < len(units) and not (convs[k].groups > 1 and convs[k + 1].groups > 1) for k in range(len(units))]
    free[-1] = head is not None
    keep = [(s >= t) | (not f) for s, t, f in zip(scores, per_layer(threshold, len(scores)), free)]
    for k, conv in enumerate(convs):
        if conv.groups > 1:
            ones = torch.ones(conv.in_channels, dtype=torch.bool)
            in_keep, in_score = (keep[k - 1], scores[k - 1]) if k else (ones, ones.double())
            new_in, keep[k] = resolve_grouped(conv.groups, in_keep, in_score, k > 0 and free[k - 1],
                                              keep[k], scores[k], free[k])
            if k:
                keep[k - 1] = new_in
    # Widths in multiples of channel_round, except around grouped convs, whose group rule decides.
    ungrouped = [c.groups == 1 and (k + 1 == len(convs) or convs[k + 1].groups == 1) for k, c in enumerate(convs)]
    return [round_up(m, s, channel_round) if f and u else keep_at_least_one(m, s)
            for m, s, f, u in zip(keep, scores, free, ungrouped)]


def check_scores(model: nn.Sequential, scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """`scores` given in place of the BN scales (the mask convs' of `models.rmnet_pruning`) must give one
    score per output channel of every unit."""
    widths = [model[u.conv].out_channels for u in parse_chain(model)[0]]
    if [s.numel() for s in scores] != widths:
        raise PruneError(f"{len(scores)} score vectors of widths {[s.numel() for s in scores]} for a chain whose "
                         f"units are {widths} wide")
    return [s.detach().abs().double().cpu() for s in scores]


def prune_plain(model: nn.Sequential, threshold: float | list[float] | None = None, ratio: float | None = None,
                channel_round: int = 1, scores: list[torch.Tensor] | None = None) -> PruneResult:
    """Return a smaller copy of `model` without the channels whose |BN scale| (or given score, see
    `check_scores`) < threshold (or the `ratio` fraction of all channels with the smallest scores),
    each layer keeping a multiple of `channel_round` channels (masks.round_up). `model` is not modified."""
    if (threshold is None) == (ratio is None):
        raise ValueError("give exactly one of threshold= or ratio=")
    units, head = parse_chain(model)
    if not units:
        raise PruneError("the chain has no conv layers to prune")
    scores = channel_scores(model) if scores is None else check_scores(model, scores)
    if threshold is None:
        threshold = global_threshold(scores, ratio)
    keep = _masks(model, units, head, threshold, channel_round, scores)
    out = copy.deepcopy(model)
    result = PruneResult(out, threshold)
    prev_keep = torch.ones(model[units[0].conv].in_channels, dtype=torch.bool)
    prev_const = torch.zeros(len(prev_keep), dtype=torch.float64)
    for unit, kept in zip(units, keep):
        conv, bn = model[unit.conv], model[unit.bn]
        act = model[unit.act] if unit.act is not None else None
        shift = conv_constant_response(conv, prev_const * ~prev_keep)
        out[unit.conv] = slice_conv(conv, kept, prev_keep)
        out[unit.bn] = slice_bn(bn, kept, shift)
        if isinstance(act, nn.PReLU):
            out[unit.act] = slice_prelu(act, kept)
        const, removed = act_constant(bn, act), ~kept
        result.removed += int(removed.sum())
        result.total += kept.numel()
        if not unit.exact_const:
            result.approximate += int((removed & (const != 0)).sum())
        prev_keep, prev_const = kept, const
        result.layers.append({"layer": unit.conv, "kernel": list(conv.kernel_size), "groups": conv.groups,
                              "groups_kept": out[unit.conv].groups, "channels": kept.numel(),
                              "kept": int(kept.sum())})
    if head is not None:
        out[head] = slice_linear(model[head], prev_keep, prev_const)
    return result
