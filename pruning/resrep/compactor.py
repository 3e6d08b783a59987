"""Compactors (ResRep, Ding et al. 2021) and where they go.

A compactor is a 1x1 conv without bias, initialised to the identity, placed after the BatchNorm of a
conv to be pruned: conv -> BN -> compactor -> activation computes what conv -> BN -> activation
did, and the training that follows drives whole rows of it to zero. A row that is zero makes its
output channel zero, and activations and pooling keep a zero channel zero, so the channel and the
reader's input slice go without a trace (`fold`). The compactor's `mask` marks the rows being
zeroed; it is the `resrep` hook's state, which checkpoints hold under "hooks" (pruning.resrep.hook), not
a weight of the model. Files written when it was a buffer still load, mask included.

Where compactors go (`slots`):
* a plain chain (`rm.convert(model, fuse_bn=False)`): after every conv unit whose output another
  conv or the Linear head reads, reserved and merged channels included; this is RM + ResRep.
* a ResNet (`pruning.residual`'s models): after every conv inside a block except the last; the stream
  channels that the additions tie keep their width (ResRep's own setting).
A grouped producer gets a block-diagonal compactor (`groups`), so the fold stays a grouped conv;
channels between two grouped convs get none (a kept group must keep equal widths on both sides, the
slimming pruner's rule too).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..plain import parse_chain
from ..residual import structure
from ..surgery import PruneError


class Compactor(nn.Module):
    """Identity-initialised 1x1 conv (block-diagonal with `groups`); `mask`: 1 kept, 0 being pruned."""

    def __init__(self, channels: int, groups: int = 1):
        super().__init__()
        per = channels // groups
        self.groups = groups
        self.weight = nn.Parameter(torch.eye(per).repeat(groups, 1).view(channels, per, 1, 1))
        self.register_buffer("mask", torch.ones(channels), persistent=False)   # moves with the model, not saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, groups=self.groups)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args) -> None:
        old = state_dict.pop(prefix + "mask", None)   # a checkpoint from when the mask was a saved buffer
        if old is not None:
            self.mask.copy_(old)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def row_norms(self) -> torch.Tensor:
        """The pruning metric: the L2 norm of every row (output channel), float64 on the CPU."""
        return self.weight.detach().flatten(1).double().norm(dim=1).cpu()

    def masked(self) -> torch.Tensor:
        return (self.mask == 0).cpu()


class CompactedBN(nn.Module):
    """A conv's BatchNorm followed by its compactor: what replaces the BN of a compacted conv."""

    def __init__(self, bn: nn.BatchNorm2d, groups: int):
        super().__init__()
        self.bn = bn
        self.compactor = Compactor(bn.num_features, groups).to(device=bn.weight.device, dtype=bn.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compactor(self.bn(x))


@dataclass
class Slot:
    """One compacted layer: the producer conv and its BN (attributes of `parent`), the activation to
    slice with it (a PReLU of a plain chain; None where it is shared or absent) and the conv or Linear
    reading its channels."""
    name: str
    parent: nn.Module
    conv: str
    bn: str
    act: str | None
    reader_parent: nn.Module
    reader: str

    @property
    def producer(self) -> nn.Conv2d:
        return getattr(self.parent, self.conv)

    @property
    def reading(self) -> nn.Module:
        return getattr(self.reader_parent, self.reader)

    @property
    def compactor(self) -> Compactor:
        return getattr(self.parent, self.bn).compactor


def _grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1


def _chain_slots(model: nn.Sequential) -> list[Slot]:
    # parse_chain reads BNs; a compacted chain is parsed through its BNs (same indices).
    units, head = parse_chain(nn.Sequential(*[m.bn if isinstance(m, CompactedBN) else m for m in model]))
    readers = [str(u.conv) for u in units[1:]] + ([str(head)] if head is not None else [None])
    slots = []
    for unit, reader in zip(units, readers):
        if reader is None or (_grouped(model[unit.conv]) and _grouped(model[int(reader)])):
            continue
        act = str(unit.act) if unit.act is not None and isinstance(model[unit.act], nn.PReLU) else None
        slots.append(Slot(str(unit.conv), model, str(unit.conv), str(unit.bn), act, model, reader))
    return slots


def _residual_slots(model: nn.Module) -> list[Slot]:
    # The ResNet walk (blocks and their conv/BN pairs) of slimming's residual pruner.
    slots = []
    for block in structure(model)[0]:
        for (conv, bn), (reader, _) in zip(block.pairs, block.pairs[1:]):
            m = block.module
            if not (_grouped(getattr(m, conv)) and _grouped(getattr(m, reader))):
                slots.append(Slot(f"{block.name}.{conv}", m, conv, bn, None, m, reader))
    return slots


def slots(model: nn.Module) -> list[Slot]:
    """Where compactors go in `model` (a plain chain or a ResNet, with or without them), in forward order."""
    return _chain_slots(model) if isinstance(model, nn.Sequential) else _residual_slots(model)


def add_compactors(model: nn.Module) -> list[Slot]:
    """Put an identity compactor after the BN of every slot of `model` (in place); returns the slots.
    The model computes exactly what it did."""
    found = slots(model)
    if not found:
        raise PruneError(f"{type(model).__name__} has no conv whose channels another conv or the head reads")
    for slot in found:
        bn = getattr(slot.parent, slot.bn)
        if isinstance(bn, CompactedBN):
            raise PruneError(f"{slot.name} already has a compactor")
        setattr(slot.parent, slot.bn, CompactedBN(bn, slot.producer.groups))
    return found


def compacted_slots(model: nn.Module) -> list[Slot]:
    """The slots of `model` that hold a compactor."""
    found = [s for s in slots(model) if isinstance(getattr(s.parent, s.bn), CompactedBN)]
    if not found:
        raise PruneError(f"{type(model).__name__} has no compactors (pruning.resrep.add_compactors puts them in)")
    return found


def compactors(model: nn.Module) -> list[Compactor]:
    return [m for m in model.modules() if isinstance(m, Compactor)]
