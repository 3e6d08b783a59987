"""Channel selection and reconstruction (AMC's channel pruning): which channels of a segment stay,
and the reader's weights refit by least squares on sampled feature maps.

A segment keeps the channels whose reader weights have the largest L1 norm (AMC). The reader is
then refit so that, on sampled positions of training images, its output from the kept channels is
as close as possible to the unpruned model's output from all of them: for a conv reader each row is
the k x k patch under one output position (AMC samples 1x1 readers; a patch makes k x k readers the
same problem). The fit has an intercept, which takes the mean contribution of the removed channels;
it goes into the reader BN's running mean or the Linear's bias, as the slimming pruner folds the
constants of removed channels. The least-squares systems are kept as Gram matrices (X'X, X'Y), in
float64, so an episode solves one small system per segment instead of refitting on the samples.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..surgery import slice_bn, slice_conv, slice_linear, slice_prelu
from .graph import Graph, Segment


@dataclass
class Features:
    """Normal equations of one reader: gram = [X 1]'[X 1], cross = [X 1]'Y, over `rows` samples."""
    gram: torch.Tensor
    cross: torch.Tensor
    rows: int
    per_channel: int          # columns of X per input channel (k*k of a conv, features of a Linear)


def _patches(reader: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C_in * per, L): what the reader multiplies at each of its L output positions."""
    if isinstance(reader, nn.Linear):
        return x.flatten(1).unsqueeze(-1)
    return F.unfold(x, reader.kernel_size, reader.dilation, reader.padding, reader.stride)


@torch.no_grad()
def collect_features(model: nn.Module, graph: Graph, batches: Iterable, points: int, seed: int,
                     device: torch.device | str = "cpu", progress: Callable = lambda it: it) -> list[Features]:
    """Sample every segment's reader input and output on `batches` of (images, labels): `points`
    output positions per batch (the same for its images, as AMC samples), all of them when fewer."""
    gen = torch.Generator().manual_seed(seed)
    model = model.eval().to(device)
    readers = [model.get_submodule(s.reader) for s in graph.segments]
    feats: list[Features | None] = [None] * len(readers)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(k: int):
        def fn(module, args, out):
            seen[k] = (args[0], out)
        return fn

    handles = [r.register_forward_hook(hook(k)) for k, r in enumerate(readers)]
    try:
        for images, _ in progress(batches):
            seen.clear()
            model(images.to(device))
            for k, reader in enumerate(readers):
                x, y = seen[k]
                cols = _patches(reader, x)
                y = y.flatten(2) if y.dim() > 2 else y.unsqueeze(-1)
                positions = cols.shape[-1]
                pick = (torch.randperm(positions, generator=gen)[:points] if positions > points
                        else torch.arange(positions)).to(cols.device)
                xs = cols[..., pick].transpose(1, 2).reshape(-1, cols.shape[1]).double()
                ys = y[..., pick].transpose(1, 2).reshape(-1, y.shape[1]).double()
                xs = torch.cat([xs, torch.ones(len(xs), 1, dtype=xs.dtype, device=xs.device)], 1)
                gram, cross = (xs.T @ xs).cpu(), (xs.T @ ys).cpu()
                per = cols.shape[1] // graph.segments[k].channels
                f = feats[k]
                feats[k] = (Features(gram, cross, len(xs), per) if f is None
                            else Features(f.gram + gram, f.cross + cross, f.rows + len(xs), per))
    finally:
        for h in handles:
            h.remove()
    return feats


def importance(reader: nn.Module, channels: int) -> torch.Tensor:
    """L1 norm of the reader's weights on each input channel (AMC's criterion)."""
    w = reader.weight.detach().double().abs()
    return w.view(w.shape[0], channels, -1).sum((0, 2))


def select(reader: nn.Module, channels: int, count: int) -> torch.Tensor:
    """Mask of the `count` channels with the largest reader-weight norm."""
    keep = torch.zeros(channels, dtype=torch.bool)
    keep[importance(reader, channels).topk(count).indices] = True
    return keep


def refit(features: Features, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares reader weights on the kept channels and the intercept: ((out, kept * per), (out,))."""
    cols = torch.cat([keep.repeat_interleave(features.per_channel), torch.ones(1, dtype=torch.bool)])
    gram, cross = features.gram[cols][:, cols], features.cross[cols]
    # gelsy (LAPACK's complete orthogonal factorisation, 8x faster than the SVD of gelsd at 1024
    # channels): the minimum-norm answer also where the samples do not pin every weight down (dead
    # ReLU channels, channels that copy each other, fewer samples than weights).
    solution = torch.linalg.lstsq(gram, cross, driver="gelsy").solution
    return solution[:-1].T.contiguous(), solution[-1]


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, module)


def _slice_outputs(model: nn.Module, conv: str, bn: str, prelu: str | None, keep: torch.Tensor,
                   depthwise: bool = False) -> None:
    c = model.get_submodule(conv)
    keep_in = keep if depthwise else torch.ones(c.in_channels, dtype=torch.bool)
    _set(model, conv, slice_conv(c, keep, keep_in))
    _set(model, bn, slice_bn(model.get_submodule(bn), keep))
    if prelu is not None:
        _set(model, prelu, slice_prelu(model.get_submodule(prelu), keep))


def _refit_reader(model: nn.Module, seg: Segment, keep: torch.Tensor, features: Features | None) -> None:
    """Slice the reader's inputs to `keep`; with `features`, set its weights to the least-squares
    refit and fold the intercept into its BN's running mean (conv) or its bias (Linear)."""
    reader = model.get_submodule(seg.reader)
    if isinstance(reader, nn.Linear):
        new = slice_linear(reader, keep, torch.zeros(len(keep), dtype=torch.float64))
    else:
        new = slice_conv(reader, torch.ones(reader.out_channels, dtype=torch.bool), keep)
    if features is not None:
        weight, intercept = refit(features, keep)
        with torch.no_grad():
            new.weight.copy_(weight.view_as(new.weight))
            if isinstance(new, nn.Linear):
                new.bias.copy_(intercept)
            elif new.bias is not None:
                new.bias.copy_(intercept)
            else:
                # the conv's output moves by -intercept; BN(z + b) is BN with running mean - b
                bn = model.get_submodule(seg.reader_bn)
                _set(model, seg.reader_bn, slice_bn(bn, torch.ones(bn.num_features, dtype=torch.bool), intercept))
    _set(model, seg.reader, new)


def apply_policy(model: nn.Module, graph: Graph, counts: list[int], features: list[Features] | None = None
                 ) -> tuple[nn.Module, list[torch.Tensor]]:
    """A pruned copy of `model` keeping `counts[k]` channels of segment k (by reader-weight norm),
    the readers refit on `features` (None: the kept weights as they are); returns it and the masks.
    A segment kept whole is left untouched."""
    out = copy.deepcopy(model).eval()
    masks = []
    for k, (seg, count) in enumerate(zip(graph.segments, counts)):
        if not 1 <= count <= seg.channels:
            raise ValueError(f"segment {k} ({seg.producer}) has {seg.channels} channels; cannot keep {count}")
        keep = select(out.get_submodule(seg.reader), seg.channels, count)
        masks.append(keep)
        if bool(keep.all()):
            continue
        _refit_reader(out, seg, keep, None if features is None else features[k])
        _slice_outputs(out, seg.producer, seg.bn, seg.prelu, keep)
        for conv, bn, prelu in seg.buffers:
            _slice_outputs(out, conv, bn, prelu, keep, depthwise=True)
    return out, masks
