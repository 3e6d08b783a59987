"""Converters for torchvision's ResNet family (and the refusal of its MobileNetV2, with the reason), and
the pieces every block converter is built from.

Model families register their own converters next to their blocks (`models/<family>.py`) from
these helpers: a converter reads a block's convs and BNs into `ConvLayer`s and applies a rule from
`rules.py`. torchvision's classes are named by import path, so this package never imports them.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from .deploy import SqueezeExcite
from .layer import BNParams, ConvLayer, PreActivation, relu_slopes
from .ops import ConversionError, dirac, to_dense
from .rules import rm_residual
from .walker import Context, Item, register_converter, unsupported


def bn_shortcut(bn: BNParams) -> ConvLayer:
    """An identity shortcut with a BN (paper §3.4): a 1x1 Dirac conv with that BN."""
    c = bn.weight.numel()
    return ConvLayer(dirac(c, (1, 1), (0, 0)), torch.zeros(c, dtype=torch.float64), bn=bn)


def shortcut_layer(downsample: nn.Module | None) -> ConvLayer | None:
    """The shortcut of a residual block: None (identity), 1x1 conv + BN, or a BN alone (an identity
    shortcut with a BN, paper §3.4: read as a 1x1 Dirac conv with that BN)."""
    if downsample is None:
        return None
    if isinstance(downsample, nn.Sequential) and len(downsample) == 1 and isinstance(downsample[0], nn.BatchNorm2d):
        return bn_shortcut(BNParams.from_module(downsample[0]))
    if not (isinstance(downsample, nn.Sequential) and len(downsample) == 2
            and isinstance(downsample[0], nn.Conv2d) and isinstance(downsample[1], nn.BatchNorm2d)):
        raise ConversionError(f"expected a shortcut of Conv2d + BatchNorm2d or of BatchNorm2d alone, got {downsample}")
    return ConvLayer.from_conv(downsample[0], downsample[1])


def with_relu(layer: ConvLayer) -> ConvLayer:
    return layer.with_act(relu_slopes(layer.out_channels))


def branch_layers(block: nn.Module, pairs: list[tuple[str, str | None]]) -> list[ConvLayer]:
    """(conv, BN or None) attribute pairs -> branch layers, ReLU after all but the last."""
    main = [ConvLayer.from_conv(getattr(block, c), getattr(block, b) if b else None) for c, b in pairs]
    return [with_relu(layer) for layer in main[:-1]] + [main[-1]]


def conv_bn_branch(seq: nn.Module) -> ConvLayer:
    """A `conv` + `bn` container (RepVGG's branches)."""
    return ConvLayer.from_conv(seq.conv, seq.bn)


def with_se(chain: list[ConvLayer], se: SqueezeExcite | None, after: int) -> list[Item]:
    """Put the block's SE after chain[after]. It gates the branch channels, which come first; the
    RM-reserved channels after them bypass it, so the last conv still merges the shortcut exactly."""
    if se is None:
        return chain
    if not isinstance(se, SqueezeExcite):
        raise ConversionError(f"an SE gate must be an rm.SqueezeExcite to convert, got {type(se).__qualname__}")
    gate = SqueezeExcite(chain[after].out_channels, se.reduced, se.gated).to(se.fc1.weight.dtype)
    gate.load_state_dict(se.state_dict())   # in the gate's own dtype: no rounding of float64 weights
    return [*chain[:after + 1], gate, *chain[after + 1:]]


def residual_block(block: nn.Module, pairs: list[tuple[str, str | None]], ctx: Context) -> list[Item]:
    """relu(branch(x) + shortcut(x)) for a block with `downsample` (None, conv + BN, or BN) and an
    optional `se` after the activation of the branch's last-but-one layer (models.layers)."""
    main = branch_layers(block, pairs)
    chain = rm_residual(main, shortcut_layer(block.downsample), relu_slopes(main[-1].out_channels),
                        ctx.nonneg, ctx.downsample)
    return with_se(chain, getattr(block, "se", None), len(main) - 2)


def preact_residual(main: list[ConvLayer], shortcut: ConvLayer | None, bn: BNParams) -> list[Item]:
    """branch(ReLU(bn(x))) + shortcut(x) for a shortcut that reads the signed x before the BN and ReLU.

    The preceding conv outputs [ReLU(bn(x)), x] (a `PreActivation` with keep_raw): the branch reads
    the first half, and the shortcut (identity or a 1x1 conv) reads the second, which L1 computes
    with an identity activation (the Fig. 2a layout) for the last conv to merge. No activation after
    the addition: the next block's pre-activation folds into the merging conv."""
    c, first = main[0].in_channels, main[0]
    zeros = first.weight.new_zeros(first.out_channels, c, *first.kernel)
    main = [replace(first, weight=torch.cat([to_dense(first.weight, first.groups), zeros], 1), groups=1), *main[1:]]
    if shortcut is None:
        select = ConvLayer(dirac(c, (1, 1), (0, 0), in_offset=c), torch.zeros(c, dtype=torch.float64))
    else:
        w, b = shortcut.fused()
        select = ConvLayer(torch.cat([torch.zeros_like(w), w], 1), b, shortcut.stride, shortcut.padding,
                           shortcut.dilation, shortcut.groups)
    return [PreActivation(bn, keep_raw=True), *rm_residual(main, select, None, False, "reserve_shortcut")]


def total_stride(items: list[Item]) -> int:
    """The product of the strides of `items`: input sizes that are multiples of it give every feature
    map an even size wherever a stride-2 layer reads it (what an average-pool shortcut needs)."""
    multiple = 1
    for item in items:
        stride = getattr(item, "stride", 1)
        multiple *= max(stride) if isinstance(stride, tuple) else stride
    return multiple


@register_converter("torchvision.models.resnet.BasicBlock")
def _basic(block: nn.Module, ctx: Context) -> list[Item]:
    return residual_block(block, [("conv1", "bn1"), ("conv2", "bn2")], ctx)


@register_converter("torchvision.models.resnet.Bottleneck")
def _bottleneck(block: nn.Module, ctx: Context) -> list[Item]:
    return residual_block(block, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")], ctx)


@register_converter("torchvision.models.mobilenetv2.MobileNetV2", "torchvision.models.mobilenetv2.InvertedResidual")
def _mobilenet_v2(module: nn.Module, ctx: Context) -> list[Item]:
    raise unsupported(ctx, module, "its blocks use ReLU6, which clamps at 6: the reserved channels that carry a "
                                   "block's input through it would be clamped too, and the plain chain has no "
                                   "per-channel clamp. models.mobilenetv2_rm (ReLU) converts to MobileNetV1")
