"""The pruned model a set of kept channels gives: grouped convs made valid, and its MACs.

`resolve` turns wanted channels into ones the fold can cut (the slimming pruner's group rules,
`pruning.masks`): a grouped conv keeps equally many channels in every kept group, so a kept group
keeps its top-k rows by norm (k the most any group wants), and a group none of whose outputs is
wanted goes with its inputs. Every layer keeps a channel. `CompactorLayout.macs` is then the multiply-adds
of the folded model (conv + Linear, bias adds not counted: `models.complexity.count_macs`), from the
kept counts alone, so the mask schedule can try thousands of masks; the tests hold it equal to
`count_macs` of the folded model. `CompactorLayout.widths` gives the widths every resized conv and Linear
takes, from which `fold.folded_cost` prices the kept channels in a budget's kind (`pruning.cost`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..cost import Widths
from ..masks import keep_at_least_one, resolve_grouped
from .compactor import Slot, compacted_slots


def resolve(slots: list[Slot], keeps: list[torch.Tensor], scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Kept channels per slot that the fold can cut, from the wanted ones (`keeps`, bool) and the
    row norms (`scores`) that pick which rows a grouped conv keeps."""
    keeps = [keep_at_least_one(k, s) for k, s in zip(keeps, scores)]
    grouped: dict[int, list] = {}   # grouped conv -> [module, in-slot, out-slot]
    for i, slot in enumerate(slots):
        for conv, side in ((slot.reading, 1), (slot.producer, 2)):
            if isinstance(conv, nn.Conv2d) and conv.groups > 1:
                grouped.setdefault(id(conv), [conv, None, None])[side] = i
    for conv, a, b in grouped.values():
        ones = torch.ones(conv.in_channels, dtype=torch.bool)
        keep_in, score_in = (keeps[a], scores[a]) if a is not None else (ones, ones.double())
        keep_out, score_out = (keeps[b], scores[b]) if b is not None else (ones, ones.double())
        keep_in, keep_out = resolve_grouped(conv.groups, keep_in, score_in, a is not None,
                                            keep_out, score_out, b is not None)
        if a is not None:
            keeps[a] = keep_in
        if b is not None:
            keeps[b] = keep_out
    return keeps


@dataclass
class _Term:
    """One conv or Linear: MACs = sum over groups of size * kept outputs * kept inputs of the group."""
    name: str          # its module path
    linear: bool
    size: int          # output pixels x kernel area (conv), features per input channel (Linear)
    groups: int
    out_full: int
    in_full: int
    out_slot: int | None
    in_slot: int | None


class CompactorLayout:
    """The compacted layers of a model with compactors and the cost of every conv and Linear."""

    def __init__(self, model: nn.Module, input_size: int):
        self.slots = compacted_slots(model)
        produces = {id(s.producer): i for i, s in enumerate(self.slots)}
        reads = {id(s.reading): i for i, s in enumerate(self.slots)}
        pixels = _output_pixels(model, input_size)
        names = {id(m): n for n, m in model.named_modules()}
        self.prelus = {names[id(p)]: i for i, s in enumerate(self.slots)   # per-channel PReLUs sliced with a slot
                       if s.act is not None and (p := getattr(s.parent, s.act)).num_parameters > 1}
        self.terms = []
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                self.terms.append(_Term(name, False, pixels[m] * m.kernel_size[0] * m.kernel_size[1], m.groups,
                                        m.out_channels, m.in_channels, produces.get(id(m)), reads.get(id(m))))
            elif isinstance(m, nn.Linear):
                slot = reads.get(id(m))
                per = m.in_features // self.slots[slot].producer.out_channels if slot is not None else m.in_features
                self.terms.append(_Term(name, True, per, 1, m.out_features, m.in_features // per, None, slot))

    def channels(self) -> list[int]:
        return [s.producer.out_channels for s in self.slots]

    def full(self) -> list[torch.Tensor]:
        """Every channel kept."""
        return [torch.ones(c, dtype=torch.bool) for c in self.channels()]

    def macs(self, keeps: list[torch.Tensor]) -> int:
        """MACs of the folded model when slot i keeps `keeps[i]` (already `resolve`d)."""
        total = 0
        for t in self.terms:
            out_g, in_g = _kept_per_group(t, keeps)
            total += t.size * int((out_g * in_g).sum())
        return total

    def widths(self, keeps: list[torch.Tensor]) -> dict[str, Widths]:
        """The widths of every conv, Linear and PReLU a slot resizes (a group whose outputs all go goes)."""
        out = {}
        for t in self.terms:
            if t.out_slot is None and t.in_slot is None:
                continue
            out_g, in_g = _kept_per_group(t, keeps)
            out[t.name] = (int(in_g.sum()) * (t.size if t.linear else 1), int(out_g.sum()), int((out_g > 0).sum()))
        for name, i in self.prelus.items():
            out[name] = (int(keeps[i].sum()), int(keeps[i].sum()), 1)
        return out


def _kept_per_group(t: _Term, keeps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept outputs and kept inputs of each group of the layer of `t`."""
    out_g = (keeps[t.out_slot].view(t.groups, -1).sum(1) if t.out_slot is not None
             else torch.full((t.groups,), t.out_full // t.groups))
    in_g = (keeps[t.in_slot].view(t.groups, -1).sum(1) if t.in_slot is not None
            else torch.full((t.groups,), t.in_full // t.groups))
    return out_g, in_g


@torch.no_grad()
def _output_pixels(model: nn.Module, input_size: int) -> dict[nn.Module, int]:
    """Output height x width of every Conv2d (compactors are not one), from one eval-mode forward pass."""
    pixels: dict[nn.Module, int] = {}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_hook(lambda m, i, out: pixels.__setitem__(m, out.shape[-2] * out.shape[-1]))
               for m in convs]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, input_size, input_size, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return pixels
