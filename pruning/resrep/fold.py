"""The compactor fold (ResRep's conversion): an exact transform of a trained model with compactors
into a narrower model without them.

Per compacted layer, conv -> BN -> compactor K is one linear map: with the BN as scale a and shift c
(a = gamma / sqrt(var + eps), c = beta - a * mean, plus a * conv bias), the conv W' = K diag(a) W and
the shift K c (block by block for a grouped conv). The fold keeps the rows of K whose norm is at
least `threshold` (made valid for grouped convs by `layout.resolve`), writes the narrower conv
without bias, and after it an identity BatchNorm carrying the shift (rm's convention: statistics
0 / 1, weight sqrt(1 + eps)), so the model keeps its conv -> BN -> activation form: a deploy chain
with BN kept, or a pruned ResNet that `artifacts.load` rebuilds. Removed rows that are zero output
exactly zero, which activations and pooling keep, so the readers' input slices go exactly too; the
result is the compactor model's function to rounding. Rows of a group that a grouped conv drops go
too, exactly: nothing reads them. Rows under the threshold that are not zero are an approximation;
`FoldResult.max_removed_norm` says how large the largest was.

`folded_cost` prices kept channels in a budget's kind (MACs, params or latency) on the folded model.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from rm.layer import BNParams

from ..budget import Budget
from ..cost import width_cost
from ..masks import round_up
from ..surgery import slice_bn, slice_conv, slice_linear, slice_prelu
from .compactor import CompactedBN, compacted_slots
from .layout import CompactorLayout, resolve


@dataclass
class FoldResult:
    model: nn.Module
    threshold: float
    layers: list[dict] = field(default_factory=list)   # per compacted layer: name, channels, kept, masked, groups
    removed: int = 0             # channels removed
    total: int = 0               # channels of the compacted layers
    masked: int = 0              # channels masked when training ended
    masked_kept: int = 0         # of those, kept because their row norm is >= threshold (not decayed)
    max_removed_norm: float = 0.0   # largest norm of a row removed under the threshold: 0, the fold is exact


def _folded(conv: nn.Conv2d, wrapped: CompactedBN) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """Full-width conv W' = K diag(a) W (no bias) and the identity BN carrying the shift K c."""
    bn, comp = wrapped.bn, wrapped.compactor
    f = BNParams.from_module(bn)
    scale, shift = f.scale_shift()
    if conv.bias is not None:
        shift = shift + scale * conv.bias.detach().double()
    g, c = comp.groups, conv.out_channels
    k = comp.weight.detach().double().view(g, c // g, c // g)
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    weight = torch.bmm(k, w.view(g, c // g, -1)).view_as(w)
    bias = torch.bmm(k, shift.view(g, c // g, 1)).view(c)
    new = nn.Conv2d(conv.in_channels, c, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                    False, conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    ident = BNParams.identity(c, f.eps)
    norm = nn.BatchNorm2d(c, bn.eps, bn.momentum, device=bn.weight.device, dtype=bn.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        for name, value in (("weight", ident.weight), ("bias", bias), ("running_mean", ident.mean),
                            ("running_var", ident.var)):
            getattr(norm, name).copy_(value)
    return new, norm


def _all(keep: torch.Tensor | None, n: int) -> torch.Tensor:
    return keep if keep is not None else torch.ones(n, dtype=torch.bool)


@torch.no_grad()
def fold_compactors(model: nn.Module, threshold: float = 1e-5, channel_round: int = 1) -> FoldResult:
    """A narrower copy of `model` (a plain chain or ResNet with compactors) without them: every
    compactor row with norm < `threshold` removes its channel, except that each layer keeps a
    multiple of `channel_round` channels (the largest rows kept back: exact, they are not cut).
    Grouped convs keep their group rule. `model` is not modified."""
    if threshold < 0:
        raise ValueError(f"the fold threshold must be >= 0, got {threshold}")
    out = copy.deepcopy(model).eval()
    slots = compacted_slots(out)
    norms = [s.compactor.row_norms() for s in slots]
    keeps = resolve(slots, [round_up(n >= threshold, n, channel_round) for n in norms], norms)
    result = FoldResult(out, threshold)
    cuts: dict[tuple[int, str], dict] = {}   # the convs and Linears to narrow: kept outputs and inputs

    def cut(parent: nn.Module, attr: str) -> dict:
        return cuts.setdefault((id(parent), attr), {"parent": parent, "attr": attr, "out": None, "in": None})

    for slot, keep, norm in zip(slots, keeps, norms):
        conv, masked = slot.producer, slot.compactor.masked()
        cut(slot.parent, slot.conv)["out"] = keep
        cut(slot.reader_parent, slot.reader)["in"] = keep
        new_conv, norm_layer = _folded(conv, getattr(slot.parent, slot.bn))
        setattr(slot.parent, slot.conv, new_conv)
        setattr(slot.parent, slot.bn, slice_bn(norm_layer, keep))
        if slot.act is not None:
            setattr(slot.parent, slot.act, slice_prelu(getattr(slot.parent, slot.act), keep))
        removed = ~keep
        result.removed += int(removed.sum())
        result.total += len(keep)
        result.masked += int(masked.sum())
        result.masked_kept += int((masked & keep).sum())
        cut_rows = removed & (norm < threshold)   # the other removed rows fed a grouped conv's removed group
        if cut_rows.any():
            result.max_removed_norm = max(result.max_removed_norm, float(norm[cut_rows].max()))
        result.layers.append({"layer": slot.name, "channels": len(keep), "kept": int(keep.sum()),
                              "masked": int(masked.sum()), "groups": conv.groups})
    for c in cuts.values():
        module = getattr(c["parent"], c["attr"])
        if isinstance(module, nn.Linear):   # removed channels are zero: nothing to add to the bias
            new = slice_linear(module, c["in"], torch.zeros(len(c["in"]), dtype=torch.float64))
        else:
            new = slice_conv(module, _all(c["out"], module.out_channels), _all(c["in"], module.in_channels))
        setattr(c["parent"], c["attr"], new)
    for layer, slot in zip(result.layers, slots):
        layer["groups_kept"] = slot.producer.groups
    out.eval()
    return result


def folded_cost(layout: CompactorLayout, model: nn.Module, budget: Budget) -> Callable[[list[torch.Tensor]], float]:
    """The cost in `budget.kind` of the folded `model` (with compactors, `layout`'s) when each slot
    keeps `keeps[i]` (already `resolve`d); `model`'s full width is its fold keeping every channel."""
    return width_cost(budget, fold_compactors(model, threshold=0.0).model, layout.widths, layout.full(), layout.macs)
