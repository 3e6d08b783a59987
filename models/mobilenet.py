"""MobileNetV1 (Howard et al. 2017), an RM-able MobileNetV2 whose conversion *is* MobileNetV1
(paper §3.3, Table 2), and the standard MobileNetV2 (Sandler et al. 2018) the RMNet authors prune
in their RM+AMC experiment.

Both are built from MobileNetV1's layer list: a 3x3 stem 32 wide, then 13 depthwise-3x3 /
pointwise-1x1 pairs whose pointwise widths are 64, 128, 128, 256, 256, 512 x 6, 1024, 1024, all
scaled by the width multiplier `width_mult` (MobileNetV1's alpha).

`mobilenetv2_rm(ratio=r)` has one inverted residual block per pair: pointwise expand -> depthwise
3x3 -> pointwise linear, BN after each, identity shortcut where the stride is 1 and the widths
match. Its linear bottleneck is 1/r of the pair's pointwise width; where the block has a shortcut
its expand width is the depthwise width minus the bottleneck, so that RM (which reserves the
bottleneck in extra channels) restores MobileNetV1's depthwise width exactly, and the composition
of one block's linear 1x1 with the next block's expand 1x1 (eq. 4) is MobileNetV1's pointwise conv.

Activations are ReLU, not MobileNetV2's ReLU6, so the conversion is exact: the converter gives the
reserved (signed) channels an identity activation, and a clamp at 6 on the other channels would
need a module outside the plain chain (docs/ARCHITECTURE.md).
Both models are `nn.Sequential`s, so the RM walker converts them without a model-level rule; the
converter of the inverted residual block is registered here. Widths scale with `width_mult`.

`mobilenetv2` is the authors' network (fxmeng/RMNet RM+AMC/models/rmnet.py, torchvision's layout):
t=6 blocks of 16..320 channels, a 1280-wide last conv, ReLU6, dropout 0.2; the CIFAR stem has stride
1. Its RM conversion is refused (ReLU6); `relu6_as_relu` gives the ReLU model the authors' step 2
converts and fine-tunes, an approximation whose output difference the caller measures (amc.relu6).
"""
from __future__ import annotations

from collections import OrderedDict
from copy import deepcopy

import torch
import torch.nn as nn

import rm
from rm.blocks import branch_layers
from rm.rules import rm_residual
from rm.walker import unsupported

from .layers import init_conv_weights
from .registry import register_model

STEM_WIDTH = 32
# (expansion t, width c, blocks n, first stride s) of MobileNetV2 (Sandler et al. 2018, Table 2).
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))
V2_LAST = 1280
RELU6_REFUSAL = ("its blocks use ReLU6, which clamps at 6: the reserved channels that carry a block's input "
                 "through it would be clamped too, and the plain chain has no per-channel clamp. "
                 "models.mobilenetv2_rm (ReLU) converts exactly; amc.relu6=approximate converts this one "
                 "with ReLU in place of ReLU6 (the RMNet authors' step 2) and reports the difference")
# (pointwise width, depthwise stride) of MobileNetV1's 13 separable pairs.
V1_PAIRS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
            (512, 1), (512, 1), (1024, 2), (1024, 1))


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act(inplace=True))


def _widths(width_mult: float, widths: object = None) -> tuple[int, list[tuple[int, int]]]:
    if widths is not None:
        raise ValueError("MobileNets scale their widths with width_mult (e.g. model.kwargs.width_mult=0.5); "
                         "they take no widths list")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    scaled = [(max(1, round(w * width_mult)), s) for w, s in V1_PAIRS]
    return max(1, round(STEM_WIDTH * width_mult)), scaled


def _stem(width: int, stem: str) -> nn.Sequential:
    return conv_bn_relu(3, width, 3, 1 if stem == "cifar" else 2)


def _head(width: int, num_classes: int) -> list[tuple[str, nn.Module]]:
    return [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1)), ("fc", nn.Linear(width, num_classes))]


class MobileNetV1(nn.Sequential):
    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", width_mult: float = 1.0, widths=None):
        cin, pairs = _widths(width_mult, widths)
        layers = [("stem", _stem(cin, stem))]
        for i, (cout, stride) in enumerate(pairs):
            layers.append((f"dw{i + 1}", conv_bn_relu(cin, cin, 3, stride, groups=cin)))
            layers.append((f"pw{i + 1}", conv_bn_relu(cin, cout, 1)))
            cin = cout
        super().__init__(OrderedDict(layers + _head(cin, num_classes)))
        init_conv_weights(self)


class InvertedResidual(nn.Module):
    """[1x1 expand + BN + ReLU] -> depthwise 3x3 + BN + ReLU -> 1x1 linear + BN (+ x)."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int, expand: bool = True,
                 shortcut: bool = True, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        if not expand and hidden != cin:
            raise ValueError(f"a block without expand conv has hidden width = input width ({cin}), got {hidden}")
        self.use_shortcut = shortcut and stride == 1 and cin == cout
        if expand:
            self.conv1 = nn.Conv2d(cin, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = act(inplace=True)

    @property
    def expand(self) -> bool:
        return hasattr(self, "conv1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x))) if self.expand else x
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return out + x if self.use_shortcut else out


@rm.register_converter(InvertedResidual)
def _convert_block(block: InvertedResidual, ctx: rm.Context) -> list:
    if type(block.relu) is not nn.ReLU:
        raise unsupported(ctx, block, RELU6_REFUSAL)
    pairs = ([("conv1", "bn1")] if block.expand else []) + [("conv2", "bn2"), ("conv3", "bn3")]
    main = branch_layers(block, pairs)
    # The output stays linear: `rm.convert` composes it with the next block's expand conv (eq. 4).
    return rm_residual(main, None, None, ctx.nonneg, ctx.downsample) if block.use_shortcut else main


class MobileNetV2RM(nn.Sequential):
    """The MobileNetV2 whose RM conversion is MobileNetV1 (module docstring); `ratio` >= 2."""

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", ratio: int = 4,
                 width_mult: float = 1.0, widths=None):
        cin, pairs = _widths(width_mult, widths)
        if ratio < 2 or any(width % ratio for width, _ in pairs):
            raise ValueError(f"ratio must be >= 2 and divide every pointwise width {sorted({w for w, _ in pairs})}, "
                             f"got {ratio}")
        layers = [("stem", _stem(cin, stem))]
        depthwise = cin  # MobileNetV1's depthwise width of the current pair
        for i, (pointwise, stride) in enumerate(pairs):
            cout = pointwise // ratio
            if i == 0:  # the stem is the first "expand": the first block starts with its depthwise,
                # and has no shortcut, which would widen MobileNetV1's first depthwise conv
                block = InvertedResidual(cin, cin, cout, stride, expand=False, shortcut=False)
            else:
                shortcut = stride == 1 and cin == cout
                block = InvertedResidual(cin, depthwise - cin if shortcut else depthwise, cout, stride)
            layers.append((f"block{i + 1}", block))
            cin, depthwise = cout, pointwise
        layers.append(("last", conv_bn_relu(cin, depthwise, 1)))
        super().__init__(OrderedDict(layers + _head(depthwise, num_classes)))
        init_conv_weights(self)


class MobileNetV2(nn.Sequential):
    """The standard MobileNetV2 (module docstring), named like MobileNetV2RM: stem, block1..17, last."""

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", width_mult: float = 1.0, widths=None):
        _widths(width_mult, widths)   # the same checks; the widths are V2_SETTING's
        cin = int(STEM_WIDTH * width_mult)   # int(), not round(): the authors' and torchvision's rule
        layers = [("stem", conv_bn_relu(3, cin, 3, 1 if stem == "cifar" else 2, act=nn.ReLU6))]
        for t, c, n, s in V2_SETTING:
            cout = int(c * width_mult)
            for i in range(n):
                block = InvertedResidual(cin, round(cin * t), cout, s if i == 0 else 1, expand=t != 1, act=nn.ReLU6)
                layers.append((f"block{len(layers)}", block))
                cin = cout
        last = int(V2_LAST * width_mult) if width_mult > 1 else V2_LAST
        layers += [("last", conv_bn_relu(cin, last, 1, act=nn.ReLU6)), ("pool", nn.AdaptiveAvgPool2d(1)),
                   ("flatten", nn.Flatten(1)), ("dropout", nn.Dropout(0.2)), ("fc", nn.Linear(last, num_classes))]
        super().__init__(OrderedDict(layers))
        init_conv_weights(self)
        nn.init.normal_(self.fc.weight, 0, 0.01)   # the authors' (and torchvision's) classifier init
        nn.init.zeros_(self.fc.bias)


@rm.register_converter(MobileNetV2)
def _convert_v2(model: MobileNetV2, ctx: rm.Context) -> list:
    """Refused while it has ReLU6 (RELU6_REFUSAL, before the walker reaches the stem's); the
    relu6_as_relu copy converts as any Sequential."""
    if has_relu6(model):
        raise unsupported(ctx, model, RELU6_REFUSAL)
    return ctx.convert_seq(list(model), [n for n, _ in model.named_children()])


def has_relu6(model: nn.Module) -> bool:
    return any(isinstance(m, nn.ReLU6) for m in model.modules())


def exact_forms(forms: list[str], model: nn.Module) -> tuple[list[str], str | None]:
    """`forms` (of `jobs.evaluate` and `jobs.benchmark`) without "plain" for a ReLU6 model, with the note why,
    so that their defaults measure the rest; asked for alone, the plain form meets the refusal."""
    if "plain" not in forms or len(forms) == 1 or not has_relu6(model):
        return list(forms), None
    return [f for f in forms if f != "plain"], ("plain form left out: the model has ReLU6, which RM does not "
                                                "convert exactly (amc.py converts it with amc.relu6=approximate)")


def relu6_as_relu(model: nn.Module) -> nn.Module:
    """A copy of `model` with every ReLU6 replaced by ReLU: the authors' conversion of MobileNetV2
    to MobileNetV1 (their residual blocks' activations become ReLU; inexact wherever a
    pre-activation exceeds 6). The copy converts exactly with RM."""
    copy = deepcopy(model)
    for parent in copy.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU(inplace=child.inplace).train(child.training))
    return copy


@register_model
def mobilenetv1(**kw): return MobileNetV1(**kw)
@register_model
def mobilenetv2_rm(**kw): return MobileNetV2RM(**kw)
@register_model
def mobilenetv2(**kw): return MobileNetV2(**kw)
