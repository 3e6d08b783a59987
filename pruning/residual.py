"""Network slimming of an un-converted ResNet (the baseline of paper Figure 6).

Channels that residual additions sum together form one *pruning group*: the stem's (or a
projection shortcut's) output, every block's last BN and every shortcut BN of a stage read and
write the same stream channel, so stream channel j goes only when all of those BN scales are under
the threshold. That tie is what limits the ResNet's pruning ratio; the channels inside blocks are
free, as in the plain chain. Works on `models.resnet.ResNet` and torchvision's ResNet, with
projection, identity or BN-only (`shortcut_bn=True`) shortcuts.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models.resnet import BasicBlock, Bottleneck

from models.resnet import ResNet

from .masks import global_threshold, keep_at_least_one, per_layer, resolve_grouped, round_up
from .plain import PruneResult
from .surgery import PruneError, act_constant, conv_constant_response, slice_bn, slice_conv, slice_linear

_RELU = nn.ReLU()


@dataclass
class _Block:
    module: nn.Module
    name: str
    pairs: list[tuple[str, str]]  # (conv, bn) attribute names of the residual branch
    stream_in: int
    stream_out: int
    mids: list[torch.Tensor] = field(default_factory=list)


def _shortcut_kind(block: nn.Module) -> str:
    ds = block.downsample
    if ds is None:
        return "identity"
    if isinstance(ds, nn.Sequential) and len(ds) == 1 and isinstance(ds[0], nn.BatchNorm2d):
        return "bn"
    if isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[0], nn.Conv2d):
        return "conv"
    raise PruneError(f"unsupported shortcut {ds}: expected None, BatchNorm2d or Conv2d + BatchNorm2d")


def structure(model: nn.Module) -> tuple[list[_Block], list[list[nn.BatchNorm2d]]]:
    """Blocks in order and the BNs of each stream (pruning group)."""
    if not isinstance(model, (ResNet, tvm.ResNet)):
        raise PruneError(f"residual pruning supports ResNet models, not {type(model).__name__}; prune other "
                         "families through RM (rm.convert(model, fuse_bn=False), then prune_plain)")
    streams, blocks = [[model.bn1]], []
    for stage in (n for n, _ in model.named_children() if n.startswith("layer")):
        for i, block in enumerate(getattr(model, stage)):
            pairs = {BasicBlock: [("conv1", "bn1"), ("conv2", "bn2")],
                     Bottleneck: [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]}.get(type(block))
            if pairs is None:
                raise PruneError(f"{stage}.{i} is a {type(block).__name__}; expected BasicBlock or Bottleneck")
            kind, s_in = _shortcut_kind(block), len(streams) - 1
            if kind == "conv":
                streams.append([block.downsample[1]])
            elif kind == "bn":
                streams[-1].append(block.downsample[0])
            streams[-1].append(getattr(block, pairs[-1][1]))
            blocks.append(_Block(block, f"{stage}.{i}", pairs, s_in, len(streams) - 1))
    return blocks, streams


def check_residual(model: nn.Module) -> None:
    """PruneError unless `model` is a ResNet whose blocks residual pruning knows (a meta-device model will do)."""
    if not isinstance(model, (ResNet, tvm.ResNet)):
        raise PruneError(f"residual pruning supports ResNet models, not {type(model).__name__}")
    structure(model)


def _score(bn: nn.BatchNorm2d) -> torch.Tensor:
    return bn.weight.detach().abs().double().cpu()


def residual_scores(model: nn.Module) -> list[torch.Tensor]:
    """Scores of the model's prunable channels: a stream channel scores the largest |BN scale| of
    its pruning group, a channel inside a block its own |BN scale|."""
    blocks, streams = structure(model)
    scores = [torch.stack([_score(bn) for bn in group]).max(0).values for group in streams]
    for b in blocks:
        scores += [_score(getattr(b.module, bn)) for _, bn in b.pairs[:-1]]
    return scores


def prune_residual(model: nn.Module, threshold: float | list[float] | None = None, ratio: float | None = None,
                   channel_round: int = 1) -> PruneResult:
    """Return a smaller copy of a ResNet without the channels whose score is under the threshold
    (or the `ratio` fraction of lowest-scoring channels, see `residual_scores`; or a threshold per
    entry of `residual_scores`), each stream and
    ungrouped block-internal width a multiple of `channel_round` (masks.round_up)."""
    if (threshold is None) == (ratio is None):
        raise ValueError("give exactly one of threshold= or ratio=")
    if model.training:
        raise PruneError("model is in training mode; call model.eval() before pruning")
    if threshold is None:
        threshold = global_threshold(residual_scores(model), ratio)
    out = copy.deepcopy(model)
    blocks, streams = structure(out)
    s_scores = [torch.stack([_score(bn) for bn in group]).max(0).values for group in streams]
    thresholds = iter(per_layer(threshold, len(s_scores) + sum(len(b.pairs) - 1 for b in blocks)))
    s_keep = [round_up(s >= next(thresholds), s, channel_round) for s in s_scores]
    for b in blocks:
        convs = [getattr(b.module, c) for c, _ in b.pairs]
        scores = [_score(getattr(b.module, bn)) for _, bn in b.pairs[:-1]]
        keep = [s >= next(thresholds) for s in scores]
        for k, conv in enumerate(convs):
            if conv.groups > 1:  # only the block-internal sides of a grouped conv may change
                in_free, out_free = k > 0, k < len(convs) - 1
                ones = torch.ones(conv.in_channels, dtype=torch.bool)
                new_in, new_out = resolve_grouped(
                    conv.groups, keep[k - 1] if in_free else ones, scores[k - 1] if in_free else ones.double(),
                    in_free, keep[k] if out_free else ones, scores[k] if out_free else ones.double(), out_free)
                if in_free:
                    keep[k - 1] = new_in
                if out_free:
                    keep[k] = new_out
        b.mids = [round_up(m, s, channel_round) if convs[k].groups == 1 and convs[k + 1].groups == 1
                  else keep_at_least_one(m, s) for k, (m, s) in enumerate(zip(keep, scores))]

    result = PruneResult(out, threshold)
    for i, keep in enumerate(s_keep):
        result.layers.append({"layer": f"stream{i}", "channels": keep.numel(), "kept": int(keep.sum())})
    for keep in s_keep:
        result.removed, result.total = result.removed + int((~keep).sum()), result.total + keep.numel()

    # Stem: conv1 -> bn1 -> relu -> maxpool; dead stream channels hold relu(beta) (pooling keeps it).
    full = torch.ones(out.conv1.in_channels, dtype=torch.bool)
    out.conv1 = slice_conv(out.conv1, s_keep[0], full)
    const = act_constant(out.bn1, _RELU)
    out.bn1 = slice_bn(out.bn1, s_keep[0])
    for b in blocks:
        const = _prune_block(b, s_keep[b.stream_in], s_keep[b.stream_out], const, result)
    out.fc = slice_linear(out.fc, s_keep[-1], const)
    return result


def _prune_block(b: _Block, keep_in: torch.Tensor, keep_out: torch.Tensor, const_in: torch.Tensor,
                 result: PruneResult) -> torch.Tensor:
    """Slice one block in place; returns the constants of its dead output stream channels."""
    m, kind = b.module, _shortcut_kind(b.module)
    beta_last = getattr(m, b.pairs[-1][1]).bias.detach().double()
    prev_keep, prev_const = keep_in, const_in
    for k, (c, n) in enumerate(b.pairs):
        conv, bn = getattr(m, c), getattr(m, n)
        kept = b.mids[k] if k < len(b.mids) else keep_out
        removed_const = prev_const * ~prev_keep
        if any(p > 0 for p in conv.padding):
            result.approximate += int((removed_const != 0).sum())
        setattr(m, c, slice_conv(conv, kept, prev_keep))
        setattr(m, n, slice_bn(bn, kept, conv_constant_response(conv, removed_const)))
        if k < len(b.mids):
            prev_keep, prev_const = kept, act_constant(bn, _RELU)
            result.removed, result.total = result.removed + int((~kept).sum()), result.total + kept.numel()
            result.layers.append({"layer": f"{b.name}.{c}", "channels": kept.numel(), "kept": int(kept.sum())})
    if kind == "conv":
        conv, bn = m.downsample
        shortcut = bn.bias.detach().double()
        m.downsample[0] = slice_conv(conv, keep_out, keep_in)
        m.downsample[1] = slice_bn(bn, keep_out, conv_constant_response(conv, const_in * ~keep_in))
    elif kind == "bn":
        shortcut = m.downsample[0].bias.detach().double()
        m.downsample[0] = slice_bn(m.downsample[0], keep_out)
    else:
        shortcut = const_in
    return (beta_last + shortcut).clamp(min=0)  # a dead stream channel after the block's ReLU
