"""The converter's intermediate representation: one conv layer with optional BatchNorm and a
per-channel activation, held in float64 while the converter rewrites it.

Keeping BatchNorm symbolic until the end lets the same rules emit either a BN-fused deploy chain or
a chain that keeps BatchNorm for fine-tuning and pruning (`fuse_bn=False`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

Pair = tuple[int, int]


def _pair(v) -> Pair:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass
class BNParams:
    """y = weight * (x - mean) / sqrt(var + eps) + bias, per channel."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    eps: float

    @classmethod
    def from_module(cls, bn: nn.BatchNorm2d) -> BNParams:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("BatchNorm2d without running statistics (track_running_stats=False) "
                             "cannot be converted: its output depends on the batch")
        c = bn.num_features
        w = bn.weight if bn.affine else torch.ones(c)
        b = bn.bias if bn.affine else torch.zeros(c)
        f64 = dict(dtype=torch.float64)
        return cls(w.detach().to(**f64), b.detach().to(**f64), bn.running_mean.detach().to(**f64),
                   bn.running_var.detach().to(**f64), float(bn.eps))

    @classmethod
    def identity(cls, channels: int, eps: float = 1e-5) -> BNParams:
        """Paper eq. 2 with statistics (0, 1): weight = sqrt(var + eps), bias = mean."""
        f64 = dict(dtype=torch.float64)
        var = torch.ones(channels, **f64)
        return cls(torch.sqrt(var + eps), torch.zeros(channels, **f64), torch.zeros(channels, **f64),
                   var, eps)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight / torch.sqrt(self.var + self.eps)
        return scale, self.bias - self.mean * scale

    def cat(self, other: BNParams) -> BNParams:
        if self.eps != other.eps:
            # Rescale `other` to this eps so the pair stays one exact BatchNorm2d.
            w = other.weight * torch.sqrt((other.var + self.eps) / (other.var + other.eps))
            other = replace(other, weight=w, eps=self.eps)
        return BNParams(*(torch.cat([getattr(self, k), getattr(other, k)])
                          for k in ("weight", "bias", "mean", "var")), self.eps)


@dataclass
class ConvLayer:
    """Conv2d (weight, bias) -> optional BN -> optional activation.

    `act` holds PReLU negative slopes per output channel: 0 is ReLU, 1 is identity; None means no
    activation at all (a linear layer, e.g. the last conv of a residual branch before the add).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    bn: BNParams | None = None
    act: torch.Tensor | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> ConvLayer:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"only zero padding given as numbers is supported, got {conv}")
        w = conv.weight.detach().to(torch.float64)
        b = (conv.bias.detach().to(torch.float64) if conv.bias is not None
             else torch.zeros(w.shape[0], dtype=torch.float64))
        return cls(w, b, _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation), conv.groups,
                   BNParams.from_module(bn) if bn is not None else None)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel(self) -> Pair:
        return tuple(self.weight.shape[2:])

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias with BN folded in."""
        if self.bn is None:
            return self.weight, self.bias
        scale, shift = self.bn.scale_shift()
        return self.weight * scale.view(-1, 1, 1, 1), self.bias * scale + shift

    def fold_bn(self) -> ConvLayer:
        w, b = self.fused()
        return replace(self, weight=w, bias=b, bn=None)

    def with_act(self, slopes: torch.Tensor) -> ConvLayer:
        if self.act is not None:
            raise ValueError("layer already has an activation")
        return replace(self, act=slopes.to(device="cpu", dtype=torch.float64))

    @property
    def output_nonneg(self) -> bool:
        return self.act is not None and bool((self.act == 0).all())


# Activation slopes are tiny and inspected as Python bools, so they always live on the CPU, even
# when the weights are on a GPU or the meta device.
def relu_slopes(channels: int) -> torch.Tensor:
    return torch.zeros(channels, dtype=torch.float64, device="cpu")


def identity_slopes(channels: int) -> torch.Tensor:
    return torch.ones(channels, dtype=torch.float64, device="cpu")


@dataclass
class PreActivation:
    """ReLU(bn(x)) in front of a pre-activation block, applied to the preceding linear conv.

    A block emits this marker first; the walker hands it to the nearest preceding conv, even one
    in an enclosing container. keep_raw: that conv must also output x itself (identity
    activation), for an identity shortcut that reads x before the BN and ReLU.
    """

    bn: BNParams
    keep_raw: bool
