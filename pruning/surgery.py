"""Module surgery shared by the plain and the residual pruners: slice layers to the kept channels
and fold the constant output of removed channels into what reads them.

A channel whose BatchNorm scale is zero outputs the constant act(beta) everywhere. Removing it is
exact when that constant is added back where the channel was read: into the next BN's running mean
(BN(z + d) equals BN with mean - d) or into a Linear's bias. For a conv with zero padding this is
exact only in the interior (border taps read the padding's 0, not the constant), which is the
approximation network slimming makes everywhere; the pruners count such channels.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class PruneError(ValueError):
    """The model cannot be pruned as asked; the message says which layer and why."""


def act_constant(bn: nn.BatchNorm2d, act: nn.Module | None) -> torch.Tensor:
    """Per-channel output of `bn` followed by `act` when the BN scale is zero: act(beta)."""
    beta = bn.bias.detach().double()
    if act is None:
        return beta
    if isinstance(act, nn.ReLU):
        return beta.clamp(min=0)
    if isinstance(act, nn.PReLU):
        slope = act.weight.detach().double().expand_as(beta)
        return torch.where(beta >= 0, beta, slope * beta)
    raise PruneError(f"unsupported activation {type(act).__name__} after a BatchNorm")


def conv_constant_response(conv: nn.Conv2d, const: torch.Tensor) -> torch.Tensor:
    """Per output channel, what `conv` adds when input channel i is the constant const[i]
    (interior pixels, i.e. ignoring padding)."""
    g = conv.groups
    taps = conv.weight.detach().double().sum((2, 3))  # (out, in / groups)
    taps = taps.view(g, conv.out_channels // g, -1)
    return torch.einsum("goi,gi->go", taps, const.view(g, -1)).reshape(-1)


def slice_conv(conv: nn.Conv2d, keep_out: torch.Tensor, keep_in: torch.Tensor) -> nn.Conv2d:
    """New conv with the kept outputs/inputs. A group keeps existing while it has a kept output;
    kept groups must keep equally many inputs and outputs (the masks are resolved that way)."""
    g = conv.groups
    out_pg, in_pg = conv.out_channels // g, conv.in_channels // g
    ko, ki = keep_out.view(g, out_pg), keep_in.view(g, in_pg)
    alive = ko.any(1)
    n_out, n_in = ko[alive].sum(1).unique(), ki[alive].sum(1).unique()
    if len(n_out) != 1 or len(n_in) != 1 or bool(ki[~alive].any()) or int(n_in[0]) == 0:
        raise PruneError(f"channel masks break the group structure of {conv}: every kept group must keep "
                         "the same number (>0) of inputs and outputs, and a removed group no inputs")
    w = conv.weight.detach().view(g, out_pg, in_pg, *conv.kernel_size)
    weight = torch.cat([w[i][ko[i]][:, ki[i]] for i in range(g) if alive[i]])
    new = nn.Conv2d(int(ki.sum()), int(ko.sum()), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    int(alive.sum()), conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias[keep_out])
    return new


def slice_bn(bn: nn.BatchNorm2d, keep: torch.Tensor, input_shift: torch.Tensor | None = None) -> nn.BatchNorm2d:
    """New BN over the kept channels; `input_shift` (added to its input by folded constants) is
    absorbed into the running mean."""
    new = nn.BatchNorm2d(int(keep.sum()), bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.running_mean.device, dtype=bn.running_mean.dtype).train(bn.training)
    with torch.no_grad():
        mean = bn.running_mean.double()
        if input_shift is not None:
            mean = mean - input_shift
        new.running_mean.copy_(mean[keep])
        new.running_var.copy_(bn.running_var[keep])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
        if bn.affine:
            new.weight.copy_(bn.weight[keep])
            new.bias.copy_(bn.bias[keep])
    return new


def slice_prelu(prelu: nn.PReLU, keep: torch.Tensor) -> nn.PReLU:
    if prelu.num_parameters == 1:
        return prelu
    new = nn.PReLU(int(keep.sum()), device=prelu.weight.device, dtype=prelu.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(prelu.weight[keep])
    return new


def slice_linear(linear: nn.Linear, keep: torch.Tensor, const: torch.Tensor) -> nn.Linear:
    """New Linear reading only the kept channels of a flattened (C, H, W) map (H*W features per
    channel); removed channels' constants go into the bias (exact)."""
    per, rem = divmod(linear.in_features, keep.numel())
    if rem:
        raise PruneError(f"{linear} follows {keep.numel()} channels but in_features is not a multiple of it")
    feat_keep = keep.repeat_interleave(per)
    feat_const = (const * (~keep)).repeat_interleave(per)
    weight = linear.weight.detach()
    new = nn.Linear(int(feat_keep.sum()), linear.out_features, True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        bias = linear.bias.double() if linear.bias is not None else torch.zeros(linear.out_features).double()
        new.bias.copy_(bias + weight.double() @ feat_const)
        new.weight.copy_(weight[:, feat_keep])
    return new
