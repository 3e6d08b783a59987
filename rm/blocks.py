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

from models.repvgg import PartialRepVGGBlock, RepVGG, RepVGGBlock
from models.resnet import ResNet
from models.rmnet import RMBlock, RMNet

from .convert import Context, Item, register_converter
from .layer import BNParams, ConvLayer, identity_slopes, relu_slopes
from .ops import dirac, kernel_center
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


def _residual(block: nn.Module, pairs, ctx: Context) -> list[Item]:
    main = [ConvLayer.from_conv(getattr(block, c), getattr(block, b)) for c, b in pairs]
    main = [_relu(layer) for layer in main[:-1]] + [main[-1]]
    out_act = relu_slopes(main[-1].out_channels)
    return rm_residual(main, _shortcut(block.downsample), out_act, ctx.nonneg, ctx.downsample)


@register_converter(BasicBlock)
def _basic(block: BasicBlock, ctx: Context) -> list[Item]:
    return _residual(block, [("conv1", "bn1"), ("conv2", "bn2")], ctx)


@register_converter(Bottleneck, RMBlock)
def _bottleneck(block: nn.Module, ctx: Context) -> list[Item]:
    return _residual(block, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")], ctx)


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
