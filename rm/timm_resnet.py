"""Converters for timm's ResNet family (`timm.models.resnet`): ResNet, ResNeXt, wide, SE and ECA
gates, the deep stems and average-pool shortcuts of ResNet-C/D/S/T, drop_path and DropBlock (no-ops in
eval). Registered by import path, so this package never imports timm.

timm's gates act on the branch before the addition (Hu et al.), so the merge cannot sit in the
branch's last conv: that conv keeps its output and the reserved channels apart, the gate scales the
first ones, and an extra 1x1 conv adds them (`rm_residual(gate=True)`). ECA's 1-D conv across
channels becomes an `rm.SqueezeExcite` whose hidden layer holds the pooled vector twice, as
relu(m) and relu(-m): their difference is m, so the gate computes exactly sigmoid(conv1d(m)).
An average-pool shortcut is exact only where every pooled feature map has even size, so a model with one
starts its plain chain with an `InputSizeCheck` for multiples of its total stride (sufficient, if not
the loosest rule). Refused, naming the block and the reason: activations other than ReLU, normalisations other than
BatchNorm, anti-aliasing layers between the branch's convs other than an average pool whose window equals
its stride (resnetaa*: composed into the conv after it, `rules.after_avg_pool`), other attention modules,
and pooled heads other than average or max.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import branch_layers, total_stride
from .deploy import InputSizeCheck, SqueezeExcite
from .layer import ConvLayer, relu_slopes
from .ops import ConversionError
from .rules import after_avg_pool, avg_pool_window, rm_residual
from .walker import ChannelGate, Context, Item, import_path, register_converter, unsupported, why_unsupported

_SIGMOIDS = ("torch.nn.modules.activation.Sigmoid", "timm.layers.activations.Sigmoid")
_LEGACY_SE = "timm.models.senet.SEModule"   # legacy_seresnet*: mean, fc1, relu, fc2, sigmoid, x * gate
_EVAL_NO_OPS = ("torch.nn.modules.linear.Identity", "timm.layers.drop.DropPath", "timm.layers.drop.DropBlock2d")


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.BatchNorm2d) and type(module).forward is nn.BatchNorm2d.forward


def _check_parts(block: nn.Module, ctx: Context, depth: int) -> None:
    for i in range(1, depth + 1):
        for name, fits in ((f"bn{i}", _is_batchnorm), (f"act{i}", lambda m: type(m) is nn.ReLU)):
            part = getattr(block, name)
            if not fits(part):
                raise unsupported(ctx, block, f"{name} is {import_path(type(part))}; {why_unsupported(part)}")
    if not isinstance(block.aa, nn.Identity) and avg_pool_window(block.aa) is None:
        raise unsupported(ctx, block, f"its anti-aliasing layer aa ({block.aa}) filters the branch between two "
                                      f"convs; only an average pool whose window equals its stride composes into "
                                      f"the conv after it, which the reserved channels then bypass")
    for name in ("drop_block", "drop_path"):
        part = getattr(block, name)
        if part is not None and import_path(type(part)) not in _EVAL_NO_OPS:
            raise unsupported(ctx, block, f"{name} is {import_path(type(part))}, not a no-op in eval mode")


def _shortcut(block: nn.Module, ctx: Context) -> tuple[ConvLayer | None, int]:
    """The shortcut conv + BN (None: identity) and the window of the average pool before it (1: none)."""
    if block.downsample is None:
        return None, 1
    parts, pool = list(block.downsample), 1
    if len(parts) == 3:   # timm's downsample_avg: pool (Identity at stride 1), 1x1 conv, BN
        first = parts.pop(0)
        pool = avg_pool_window(first) or 1
        if pool == 1 and not isinstance(first, nn.Identity):
            raise unsupported(ctx, block, f"its shortcut pools with {first}; only an average pool whose window "
                                          f"equals its stride (ResNet-D) rides through the branch's strided conv")
    if len(parts) != 2 or type(parts[0]) is not nn.Conv2d or not _is_batchnorm(parts[1]):
        raise unsupported(ctx, block, f"its shortcut is {block.downsample}, not [pool,] conv, BatchNorm")
    return ConvLayer.from_conv(parts[0], parts[1]), pool


def _se_weights(se: nn.Module, ctx: Context, block: nn.Module) -> list[torch.Tensor]:
    """fc1, fc2 weights and biases of timm's SEModule or of the legacy SENet's (relu, sigmoid; no options)."""
    legacy = import_path(type(se)) == _LEGACY_SE
    act, gate = (se.relu, se.sigmoid) if legacy else (se.act, se.gate)
    if not legacy and (se.add_maxpool or not isinstance(se.bn, nn.Identity)) or type(act) is not nn.ReLU \
            or import_path(type(gate)) not in _SIGMOIDS:
        raise unsupported(ctx, block, "its SE module is not mean -> fc -> ReLU -> fc -> sigmoid (max pooling, "
                                      "a norm, or another activation or gate), which rm.SqueezeExcite computes")
    return [t.detach() if t is not None else torch.zeros(fc.out_channels)
            for fc in (se.fc1, se.fc2) for t in (fc.weight, fc.bias)]


def _eca_weights(eca: nn.Module, ctx: Context, block: nn.Module, channels: int) -> list[torch.Tensor]:
    conv = eca.conv
    if eca.conv2 is not None or import_path(type(eca.gate)) not in _SIGMOIDS or conv.stride != (1,) \
            or conv.dilation != (1,) or conv.padding_mode != "zeros" or conv.in_channels != 1 \
            or conv.out_channels != 1:
        raise unsupported(ctx, block, "its ECA module is not one zero-padded 1-D conv and a sigmoid")
    k, p = conv.kernel_size[0], conv.padding[0]
    w = conv.weight.detach().to(torch.float64).view(k)
    # logits[i] = sum_t w[t] m[i + t - p]: a banded channel-mixing matrix.
    mix = sum(w[t] * torch.diag(torch.ones(channels - abs(t - p), dtype=torch.float64), t - p)
              for t in range(k) if abs(t - p) < channels)
    eye = torch.eye(channels, dtype=torch.float64)
    bias = conv.bias.detach().expand(channels) if conv.bias is not None else torch.zeros(channels)
    return [torch.cat([eye, -eye])[..., None, None], torch.zeros(2 * channels),
            torch.cat([mix, -mix], dim=1)[..., None, None], bias]


def _gate(block: nn.Module, ctx: Context, channels: int, gated: int) -> SqueezeExcite:
    """The block's SE or ECA module as a gate on the first `gated` of `channels` channels."""
    kind = import_path(type(block.se))
    if kind == "timm.layers.squeeze_excite.SEModule":
        weights = _se_weights(block.se, ctx, block)
    elif kind == "timm.layers.eca.EcaModule":
        weights = _eca_weights(block.se, ctx, block, gated)
    else:
        raise unsupported(ctx, block, f"its attention module se ({kind}) is not timm's SEModule or EcaModule, the "
                                      f"gates rm.SqueezeExcite can compute")
    return _as_gate(weights, channels, gated)


def _as_gate(weights: list[torch.Tensor], channels: int, gated: int) -> SqueezeExcite:
    gate = SqueezeExcite(channels, weights[0].shape[0], gated).to(torch.float64)
    for param, value in zip((gate.fc1.weight, gate.fc1.bias, gate.fc2.weight, gate.fc2.bias), weights):
        param.detach().copy_(value)
    return gate


def _block(block: nn.Module, ctx: Context, depth: int) -> list[Item]:
    _check_parts(block, ctx, depth)
    shortcut, pool = _shortcut(block, ctx)
    main = branch_layers(block, [(f"conv{i}", f"bn{i}") for i in range(1, depth + 1)])
    if not isinstance(block.aa, nn.Identity):   # aa pools the input of the last conv (Basic: conv2, Bottleneck: conv3)
        main[-1] = after_avg_pool(main[-1], avg_pool_window(block.aa))
        if main[-1] is None:
            raise unsupported(ctx, block, "its anti-aliasing pool precedes a dilated conv, which no conv composes")
    gated = block.se is not None
    try:
        chain = rm_residual(main, shortcut, relu_slopes(main[-1].out_channels), ctx.nonneg, ctx.downsample,
                            pool, gated)
    except ConversionError as e:
        raise unsupported(ctx, block, str(e)) from None
    if not gated:
        return chain
    return [*chain[:-1], _gate(block, ctx, chain[-2].out_channels, main[-1].out_channels), chain[-1]]


@register_converter("timm.models.resnet.BasicBlock")
def _basic(block: nn.Module, ctx: Context) -> list[Item]:
    return _block(block, ctx, 2)


@register_converter("timm.models.resnet.Bottleneck")
def _bottleneck(block: nn.Module, ctx: Context) -> list[Item]:
    return _block(block, ctx, 3)


@register_converter("timm.models.resnet.ResNet")
def _resnet(model: nn.Module, ctx: Context) -> list[Item]:
    """Stem (conv1: a conv or timm's deep stem; bn1, act1, maxpool), layer1..N, global_pool, fc; the
    head's dropout is functional and a no-op in eval."""
    names = ["conv1", "bn1", "act1", "maxpool", *(n for n, _ in model.named_children() if n.startswith("layer")),
             "global_pool", "fc"]
    items = ctx.convert_seq([getattr(model, n) for n in names], names)
    if not any(type(m) is nn.AvgPool2d for n, m in model.named_modules() if ".downsample." in n or n.endswith(".aa")):
        return items
    return [InputSizeCheck(total_stride(items)), *items]


@register_converter("timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d", leaf=True)
def _global_pool(pool: nn.Module, ctx: Context) -> list[Item]:
    if type(pool.pool) not in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity):
        raise unsupported(ctx, pool, f"pool_type {pool.pool_type!r} ({import_path(type(pool.pool))}) has no plain-chain "
                                     f"module; build the model with global_pool='avg' or 'max'")
    return ctx.convert_seq([pool.pool, pool.flatten], ["pool", "flatten"])


@register_converter("timm.layers.blur_pool.BlurPool2d", leaf=True)
def _blur_pool(pool: nn.Module, ctx: Context) -> list[Item]:
    raise unsupported(ctx, pool, "blur-pool anti-aliasing pads by reflection, which the zero-padded convs of the "
                                 "plain chain cannot reproduce")


@register_converter("timm.layers.linear.Linear", leaf=True)
def _linear(linear: nn.Module, ctx: Context) -> list[Item]:
    """timm's Linear only casts its weights under TorchScript: in the chain it is a torch Linear."""
    plain = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None)
    plain.load_state_dict(linear.state_dict())
    return [plain.to(linear.weight.dtype)]


@register_converter("timm.layers.norm_act.BatchNormAct2d", leaf=True)
def _bn_act(bn: nn.Module, ctx: Context) -> list[Item]:
    """timm's BatchNorm + dropout + activation in one module: the BN (folded like any), then the others."""
    if type(bn).forward is not _bn_act_forward(bn):
        raise unsupported(ctx, bn, "its forward is not timm's BatchNormAct2d forward")
    return [bn, *ctx.convert(bn.drop, "drop"), *ctx.convert(bn.act, "act")]


def _bn_act_forward(bn: nn.Module):
    return next(cls.forward for cls in type(bn).__mro__ if import_path(cls) == "timm.layers.norm_act.BatchNormAct2d")


@register_converter("timm.layers.squeeze_excite.SEModule", _LEGACY_SE, leaf=True)
def _se_module(se: nn.Module, ctx: Context) -> list[Item]:
    """timm's SE (or the legacy SENet's) as an `rm.SqueezeExcite` over all its channels (the graph pass lets
    reserved channels bypass it)."""
    return [_as_gate(_se_weights(se, ctx, se), se.fc1.in_channels, se.fc1.in_channels)]


@register_converter("timm.layers.eca.EcaModule", leaf=True)
def _eca_module(eca: nn.Module, ctx: Context) -> list[Item]:
    """timm's ECA as an `rm.SqueezeExcite` over the channels of the conv before it."""
    return [ChannelGate(lambda c: _as_gate(_eca_weights(eca, ctx, eca, c), c, c))]
