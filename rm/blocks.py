"""Converters for the block and model types of this project and of torchvision.

Each converter reads a module's layers into `ConvLayer`s and applies a rule from `rules.py`;
adding a family means adding one function here.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models.resnet import BasicBlock, Bottleneck

from models.mobilenet import InvertedResidual
from models.preact_resnet import PreActBlock, PreActBottleneck
from models.repvgg import PartialRepVGGBlock, RepVGG, RepVGGBlock
from models.resnet import ResNet
from models.rmnet import RMBlock, RMNet

from .convert import Context, Item, register_converter
from .deploy import SqueezeExcite
from .layer import BNParams, ConvLayer, PreActivation, identity_slopes, relu_slopes
from .ops import dirac, kernel_center, to_dense
from .rules import fuse_branches, rm_residual


def _shortcut(downsample) -> ConvLayer | None:
    if downsample is None:
        return None
    if isinstance(downsample, nn.Sequential) and len(downsample) == 1 and isinstance(downsample[0], nn.BatchNorm2d):
        # Identity shortcut with a BN (network slimming, paper §3.4): a 1x1 Dirac conv + that BN.
        bn = downsample[0]
        c = bn.num_features
        return ConvLayer(dirac(c, (1, 1), (0, 0)), torch.zeros(c, dtype=torch.float64), bn=BNParams.from_module(bn))
    if not (isinstance(downsample, nn.Sequential) and len(downsample) == 2
            and isinstance(downsample[0], nn.Conv2d) and isinstance(downsample[1], nn.BatchNorm2d)):
        raise TypeError(f"expected a downsample of Conv2d + BatchNorm2d or of BatchNorm2d alone, got {downsample}")
    return ConvLayer.from_conv(downsample[0], downsample[1])


def _relu(layer: ConvLayer) -> ConvLayer:
    return layer.with_act(relu_slopes(layer.out_channels))


def _branch_layers(block: nn.Module, pairs) -> list[ConvLayer]:
    """(conv, BN or None) attribute pairs -> branch layers, ReLU after all but the last."""
    main = [ConvLayer.from_conv(getattr(block, c), getattr(block, b) if b else None) for c, b in pairs]
    return [_relu(layer) for layer in main[:-1]] + [main[-1]]


def _with_se(chain: list[ConvLayer], se: nn.Module | None, after: int) -> list[Item]:
    """Put the block's SE after chain[after]. It gates the branch channels, which come first; the
    RM-reserved channels after them bypass it, so the last conv still merges the shortcut exactly."""
    if se is None:
        return chain
    gate = SqueezeExcite(chain[after].out_channels, se.fc1.out_channels, se.fc2.out_channels)
    gate = gate.to(se.fc1.weight.dtype)  # no rounding of float64 weights on the way
    gate.load_state_dict(se.state_dict())
    return [*chain[:after + 1], gate, *chain[after + 1:]]


def _residual(block: nn.Module, pairs, ctx: Context) -> list[Item]:
    main = _branch_layers(block, pairs)
    out_act = relu_slopes(main[-1].out_channels)
    chain = rm_residual(main, _shortcut(block.downsample), out_act, ctx.nonneg, ctx.downsample)
    # SE sits after the activation of the layer before the last (models.layers.SEModule).
    return _with_se(chain, getattr(block, "se", None), len(main) - 2)


@register_converter(BasicBlock)
def _basic(block: BasicBlock, ctx: Context) -> list[Item]:
    return _residual(block, [("conv1", "bn1"), ("conv2", "bn2")], ctx)


@register_converter(Bottleneck, RMBlock)
def _bottleneck(block: nn.Module, ctx: Context) -> list[Item]:
    return _residual(block, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")], ctx)


@register_converter(InvertedResidual)
def _inverted_residual(block: InvertedResidual, ctx: Context) -> list[Item]:
    pairs = ([("conv1", "bn1")] if block.expand else []) + [("conv2", "bn2"), ("conv3", "bn3")]
    main = _branch_layers(block, pairs)
    # The output stays linear: `rm.convert` composes it with the next block's expand conv (eq. 4).
    return rm_residual(main, None, None, ctx.nonneg, ctx.downsample) if block.use_shortcut else main


@register_converter(PreActBlock, PreActBottleneck)
def _preact(block: nn.Module, ctx: Context) -> list[Item]:
    n = block.convs
    main = _branch_layers(block, [(f"conv{i}", f"bn{i + 1}") for i in range(1, n)] + [(f"conv{n}", None)])
    shortcut = ConvLayer.from_conv(block.shortcut) if block.shortcut is not None else None
    if block.bn1 is None:  # first block: the stem's BN + ReLU already activated the input
        return rm_residual(main, shortcut, None, ctx.nonneg, ctx.downsample)
    bn = BNParams.from_module(block.bn1)
    if shortcut is not None:  # the projection reads the activated input; x itself is not needed
        return [PreActivation(bn, keep_raw=False), *rm_residual(main, shortcut, None, True, ctx.downsample)]
    # The identity shortcut reads x before BN and ReLU, and x is signed. The preceding conv outputs
    # [ReLU(bn1(x)), x]: the branch reads the first half, and the shortcut selects the second,
    # which L1 reserves with an identity activation (the Fig. 2a layout) for the last conv to merge.
    c = main[0].in_channels
    first = main[0]
    zeros = first.weight.new_zeros(first.out_channels, c, *first.kernel)
    main[0] = replace(first, weight=torch.cat([to_dense(first.weight, first.groups), zeros], 1), groups=1)
    select = ConvLayer(dirac(c, (1, 1), (0, 0), in_offset=c), torch.zeros(c, dtype=torch.float64))
    return [PreActivation(bn, keep_raw=True), *rm_residual(main, select, None, False, "reserve_shortcut")]


def _branch(seq: nn.Sequential) -> ConvLayer:
    return ConvLayer.from_conv(seq.conv, seq.bn)


def _identity_bn(bn) -> BNParams | None:
    return BNParams.from_module(bn) if bn is not None else None


@register_converter(RepVGGBlock)
def _repvgg_block(block: RepVGGBlock, ctx: Context) -> list[Item]:
    fused = fuse_branches([_branch(block.rbr_dense), _branch(block.rbr_1x1)], _identity_bn(block.rbr_identity))
    return [_relu(fused)]


@register_converter(PartialRepVGGBlock)
def _partial_repvgg_block(block: PartialRepVGGBlock, ctx: Context) -> list[Item]:
    n = block.reserved
    fused = fuse_branches([_branch(block.rbr_dense), _branch(block.rbr_1x1)],
                          _identity_bn(block.rbr_identity), identity_offset=n)
    # The reserved channels come first: Dirac filters that ride through the ReLU (input >= 0) or
    # through PReLU slope 1 otherwise.
    carry = dirac(n, fused.kernel, kernel_center(fused), in_channels=fused.in_channels)
    keep = relu_slopes(n) if ctx.nonneg else identity_slopes(n)
    return [replace(fused, weight=torch.cat([carry, fused.weight]),
                    bias=torch.cat([torch.zeros(n, dtype=torch.float64), fused.bias]),
                    act=torch.cat([keep, relu_slopes(fused.out_channels)]))]


@register_converter(ResNet, tvm.ResNet)
def _resnet(model: nn.Module, ctx: Context) -> list[Item]:
    names = ["conv1", "bn1", "relu", "maxpool"]
    names += [n for n, _ in model.named_children() if n.startswith("layer")]
    items = ctx.convert_seq([getattr(model, n) for n in names + ["avgpool"]], names + ["avgpool"])
    return items + [nn.Flatten(1), model.fc]


@register_converter(RMNet)
def _rmnet(model: RMNet, ctx: Context) -> list[Item]:
    names = ["layer0"] + [f"layer{i + 1}" for i in range(model.num_stages)] + ["gap"]
    return ctx.convert_seq([getattr(model, n) for n in names], names) + [nn.Flatten(1), model.fc]


@register_converter(RepVGG)
def _repvgg(model: RepVGG, ctx: Context) -> list[Item]:
    names = [f"stage{i}" for i in range(5)] + ["gap"]
    return ctx.convert_seq([getattr(model, n) for n in names], names) + [nn.Flatten(1), model.linear]
