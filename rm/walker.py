"""`convert(model)`: residual model in, new plain model out (the input model is not modified).

Converters are registered per module type (`@register_converter(Type, ...)`), by the module that
defines the type, or by its import path (`"torchvision.models.resnet.BasicBlock"`), so that this
package covers other libraries' blocks without importing them. Each turns one module into a list
of items, which are `ConvLayer`s (the IR) or plain modules (pooling, Flatten, Linear, ReLU). A
module without a converter that is not a plain module or Sequential goes to the graph pass
(`rm/graph.py`), which traces its forward and converts residual adds with the same rules. The
walker tracks whether the tensor between modules is known to be non-negative, which decides
whether reserved channels can ride through a ReLU or need PReLU with slope 1.
A peephole folds BatchNorm2d/ReLU/PReLU modules (and `PreActivation`, `ChannelScale` items) that follow
a conv into its `ConvLayer`; a last pass composes convs that have no activation between them (eq. 4).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable, Union

import torch
import torch.nn as nn
from torch.nn.utils import skip_init

from .deploy import InputSizeCheck, SqueezeExcite
from .layer import BNParams, ConvLayer, PreActivation, relu_slopes
from .ops import ConversionError, dirac
from .rules import SCHEMES, compose, scale_output, split_output


@dataclass
class ChannelGate:
    """A gate whose `SqueezeExcite` depends on the width of the tensor it scales, which its module does not
    record (timm's ECA): built from the conv before it when the walker appends it."""

    build: Callable[[int], SqueezeExcite]


@dataclass
class ChannelScale:
    """x * scale per channel (a mask conv: a depthwise 1x1 conv without bias), folded into the linear conv
    before it; at the head of a residual shortcut, followed by a ReLU on x >= 0, a scaled identity."""

    scale: torch.Tensor  # float64, one per channel


Item = Union[ConvLayer, PreActivation, ChannelGate, ChannelScale, nn.Module]
Converter = Callable[[nn.Module, "Context"], list[Item]]

_CONVERTERS: dict[type | str, Converter] = {}
# The converter of every other module: the graph pass (rm/graph.py). It builds on this module, so it
# registers itself here (the package imports it) rather than being imported: no import cycle.
_GRAPH_PASS: list[Converter] = []
# Types whose converter stands for one operation, not a block with a forward of its own: they stay
# converted by it when the graph pass is forced (`convert(..., use_registered=False)`).
_LEAF_TYPES: set[type | str] = set()

# Modules copied into the plain chain as they are; the bool says whether they keep a
# non-negative input non-negative. (SqueezeExcite is there for plain chains converted again, to fold
# the BatchNorms a keep-BN conversion left.)
_PASSTHROUGH: dict[type, bool] = {
    nn.MaxPool2d: True, nn.AvgPool2d: True, nn.AdaptiveAvgPool2d: True, nn.AdaptiveMaxPool2d: True,
    nn.Flatten: True, nn.Linear: False, nn.ReLU: True, SqueezeExcite: True, InputSizeCheck: True,
}
_DROPPED = (nn.Identity, nn.Dropout)  # no-ops in eval mode


def register_converter(*types: type | str, leaf: bool = False) -> Callable[[Converter], Converter]:
    """Register a converter for module types, given as classes or as "package.module.QualName"
    import paths; a subclass uses its nearest registered base class. leaf=True: the type is one
    operation (a norm + activation, a pooling head), kept by its converter even when the graph pass
    is forced on blocks."""
    def deco(fn: Converter) -> Converter:
        for t in types:
            _CONVERTERS[t] = fn
            if leaf:
                _LEAF_TYPES.add(t)
        return fn
    return deco


def register_graph_pass(fn: Converter) -> Converter:
    _GRAPH_PASS[:] = [fn]
    return fn


def registered_types() -> list[type | str]:
    return list(_CONVERTERS)


def import_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _converter(module: nn.Module, use_registered: bool = True) -> Converter | None:
    for cls in type(module).__mro__:
        for key in (cls, import_path(cls)):
            if key in _CONVERTERS and (use_registered or key in _LEAF_TYPES):
                return _CONVERTERS[key]
    return None


@dataclass
class Context:
    fuse_bn: bool = True
    downsample: str = "reserve_input"
    nonneg: bool = False  # is the current tensor known to be >= 0?
    path: list[str] = field(default_factory=list)
    use_registered: bool = True  # False: blocks with a converter go through the graph pass (tests compare both)

    def convert(self, module: nn.Module, name: str = "") -> list[Item]:
        """Convert one module (any registered or pass-through type) at the current position."""
        self.path.append(name or type(module).__name__)
        try:
            items = _convert_one(module, self)
        finally:
            self.path.pop()
        return items

    def convert_seq(self, modules, names=None) -> list[Item]:
        items: list[Item] = []
        names = names or [""] * len(modules)
        for name, module in zip(names, modules):
            for item in self.convert(module, name):
                append_item(items, item, self)
        return items


def _convert_one(module: nn.Module, ctx: Context) -> list[Item]:
    converter = _converter(module, ctx.use_registered)
    if converter is not None:
        before = ctx.nonneg
        items = converter(module, ctx)
        ctx.nonneg = _nonneg_after(items, before)
        return items
    if isinstance(module, _DROPPED):
        return []
    if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.PReLU)) and not _torch_forward(module):
        raise unsupported(ctx, module, f"it computes something else than {_torch_base(module).__name__} (its forward "
                                       f"is its own: weight standardisation, dynamic padding, ...), which RM cannot "
                                       f"read from its weights; register a converter for it")
    if isinstance(module, nn.Conv2d):
        ctx.nonneg = False
        return [ConvLayer.from_conv(module)]
    if isinstance(module, (nn.BatchNorm2d, nn.PReLU)):
        ctx.nonneg = False
        return [module]  # folded into the preceding conv by `_append`
    for cls, keeps in _PASSTHROUGH.items():
        if type(module) is cls:
            ctx.nonneg = (ctx.nonneg and keeps) or cls is nn.ReLU
            return [module]
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        # Any Sequential (or subclass that keeps Sequential's forward) is its children in order.
        return ctx.convert_seq(list(module), [n for n, _ in module.named_children()])
    if _is_torch_module(module) or isinstance(module, _NORMS):
        raise unsupported(ctx, module, why_unsupported(module))
    return _GRAPH_PASS[0](module, ctx)


def _is_torch_module(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn.")


def _torch_base(module: nn.Module) -> type:
    return next(cls for cls in (nn.Conv2d, nn.BatchNorm2d, nn.PReLU) if isinstance(module, cls))


def _torch_forward(module: nn.Module) -> bool:
    """Does a Conv2d/BatchNorm2d/PReLU (subclass) compute what torch's class computes from its weights?"""
    return type(module).forward is _torch_base(module).forward


_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_LEAF_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.PReLU, *_NORMS, *_DROPPED, *_PASSTHROUGH)


def is_leaf(module: nn.Module, ctx: Context) -> bool:
    """Is `module` one node of the graph pass's trace: torch.nn's own modules (converted or refused
    with the reason), the plain-chain modules and every module with a converter."""
    if _converter(module, ctx.use_registered) is not None or isinstance(module, _LEAF_MODULES):
        return True
    return _is_torch_module(module) and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


def unsupported(ctx: Context, module: nn.Module, reason: str) -> ConversionError:
    """The refusal of `module` at the walker's position: one line naming it, its class by import
    path, and the reason."""
    return ConversionError(f"cannot convert module {'.'.join(ctx.path)} of type {import_path(type(module))}: {reason}")


def why_unsupported(module: nn.Module) -> str:
    """Why a module without converter has no plain form: the reason for its kind, or what to do."""
    if type(module).__module__ == "torch.nn.modules.activation":
        return (f"the plain chain's activations are ReLU and PReLU, the ones RM can carry reserved channels "
                f"through exactly; {type(module).__name__} has no exact plain form here")
    if isinstance(module, _NORMS):
        return ("it normalises every input with that input's own statistics, which no conv can hold; only "
                "BatchNorm with running statistics folds into a conv")
    return ("no RM converter is registered for this type; register one with rm.register_converter (a converter "
            "turns the block into ConvLayers, see rm/blocks.py and rm/timm_resnet.py)")


def _nonneg_after(items: list[Item], before: bool) -> bool:
    state = before
    for item in items:
        if isinstance(item, ConvLayer):
            state = item.output_nonneg
        elif isinstance(item, nn.ReLU):
            state = True
        elif isinstance(item, (nn.Linear, nn.BatchNorm2d, ChannelScale)):
            state = False
    return state


def append_item(items: list[Item], item: Item, ctx: Context) -> None:
    """Append `item`, folding a BN, ReLU, PReLU, channel scale or pre-activation marker into the linear
    conv before it. Where the item before cannot take a BN, scale or pre-activation (pooling, an
    activated conv), an identity 1x1 conv does."""
    last = items[-1] if items else None
    if isinstance(item, ChannelGate):
        if not isinstance(last, ConvLayer):
            raise ConversionError(f"the gate at {'.'.join(ctx.path)} does not follow a conv, whose width it needs")
        item = item.build(last.out_channels)
    # A BN, scale or pre-activation the item before cannot take gets an identity 1x1 conv to fold into;
    # first in a container, it stays for the enclosing container's walk to fold (a pre-activation block's BN).
    foldable = isinstance(last, ConvLayer) and last.act is None and (
        last.bn is None or isinstance(item, (PreActivation, ChannelScale)))
    if isinstance(item, (PreActivation, nn.BatchNorm2d, ChannelScale)) and last is not None and not foldable:
        items.append(ConvLayer(dirac(_width(item), (1, 1), (0, 0)), torch.zeros(_width(item), dtype=torch.float64)))
        last = items[-1]
    if isinstance(item, ChannelScale):
        if last is None:
            items.append(item)
        else:
            items[-1] = scale_output(last, item.scale)
        return
    if isinstance(item, PreActivation):
        if isinstance(last, ConvLayer) and last.act is None:
            items[-1] = split_output(last, item.bn, item.keep_raw)
        else:  # first block of a container: the enclosing container's walk applies it
            items.append(item)
        return
    if isinstance(last, ConvLayer) and last.act is None:
        if isinstance(item, nn.BatchNorm2d) and last.bn is None:
            items[-1] = replace(last, bn=BNParams.from_module(item))
            return
        if isinstance(item, nn.ReLU):
            items[-1] = last.with_act(relu_slopes(last.out_channels))
            return
        if isinstance(item, nn.PReLU):
            slopes = item.weight.detach().to("cpu", torch.float64).expand(last.out_channels).clone()
            items[-1] = last.with_act(slopes)
            return
    if isinstance(item, nn.PReLU):
        raise ConversionError(f"{type(item).__name__} at {'.'.join(ctx.path)} does not follow a conv "
                              "and cannot be folded into the plain chain")
    items.append(item)


def _width(item: PreActivation | nn.BatchNorm2d | ChannelScale) -> int:
    if isinstance(item, PreActivation):
        return item.bn.weight.numel()
    return item.num_features if isinstance(item, nn.BatchNorm2d) else item.scale.numel()


def convert(model: nn.Module, fuse_bn: bool = True, downsample: str = "reserve_input", use_registered: bool = True
            ) -> nn.Sequential:
    """Return a plain nn.Sequential (Conv2d, [BatchNorm2d,] ReLU/PReLU, pooling, Flatten, Linear,
    and `rm.deploy.SqueezeExcite` for SE models) computing the same function as `model` in eval
    mode. `model` is not modified.

    fuse_bn=False keeps a BatchNorm2d after every conv (the original one where a conv maps onto one
    trained conv+BN, an identity one (paper eq. 2) where convs were merged) for fine-tuning/pruning.
    downsample: "reserve_input" (paper Fig. 2b, default) or "reserve_shortcut" (Fig. 2a).
    use_registered=False converts blocks that have a registered converter through the graph pass
    instead (the tests check that both give the same plain model).
    """
    check_preconditions(model)
    if downsample not in SCHEMES:
        raise ValueError(f"downsample must be one of {SCHEMES}, got {downsample!r}")
    ctx = Context(fuse_bn=fuse_bn, downsample=downsample, use_registered=use_registered)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    # New tensors (Dirac kernels, zero blocks) are made on the model's device: conversion runs on
    # a GPU for GPU models, and on the meta device for shape-only analysis of huge models.
    with torch.no_grad(), torch.device(device):
        items = fuse_linear(ctx.convert(model, type(model).__name__))
        plain = emit(items, fuse_bn).to(dtype=dtype)
    plain.eval()
    return plain


def check_preconditions(model: nn.Module) -> None:
    """Refuse a model whose eval-mode function the plain chain could not reproduce, naming the modules.

    Reserved channels themselves need no check: the walker passes them through a ReLU only where
    it knows the tensor is non-negative and uses an identity PReLU elsewhere, so RM is exact by
    construction. What can break it are the weights: BatchNorm in training mode or without running
    statistics (it would normalise with batch statistics that no conv can hold), a negative running
    variance, or NaN/Inf anywhere (they would spread through every merged kernel). Values of meta
    tensors (shape-only conversion) are not checked."""
    training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
    if training:
        raise ConversionError(f"modules in training mode ({_names(training)}): BatchNorm would use batch "
                              f"statistics. Call model.eval() before converting.")
    no_stats = [n for n, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats]
    if no_stats:
        raise ConversionError(f"BatchNorm without running statistics (track_running_stats=False) at "
                              f"{_names(no_stats)}: it normalises with batch statistics, which no conv can "
                              f"hold. Rebuild those layers with running statistics and recompute them.")
    bad_var = [n for n, m in model.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None
               and not m.running_var.is_meta and bool((m.running_var < 0).any())]
    if bad_var:
        raise ConversionError(f"negative BatchNorm running variance at {_names(bad_var)}: the statistics "
                              f"are corrupt; recompute them (e.g. rm.recalibrate) or reload the checkpoint.")
    non_finite = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
                  if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all())]
    if non_finite:
        raise ConversionError(f"non-finite values (NaN/Inf) in {_names(non_finite)}: the training run "
                              f"diverged; convert an earlier checkpoint.")


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def fuse_linear(items: list[Item]) -> list[Item]:
    """Compose each conv without activation with the conv after it where that is exact (paper
    eq. 4: after RM, an inverted residual block's linear 1x1 and the next block's expanding 1x1)."""
    out: list[Item] = []
    for item in items:
        last = out[-1] if out else None
        if isinstance(item, ConvLayer) and isinstance(last, ConvLayer) and last.act is None:
            fused = compose(last, item)
            if fused is not None:
                out[-1] = fused
                continue
        out.append(item)
    return out


def emit(items: list[Item], fuse_bn: bool) -> nn.Sequential:
    modules: list[nn.Module] = []
    for item in items:
        if isinstance(item, (PreActivation, nn.BatchNorm2d, ChannelScale)):
            raise ConversionError("a BatchNorm (of a pre-activation block) or a channel scale comes first in "
                                  "the model, so it has no conv to fold into")
        if isinstance(item, ConvLayer):
            modules += _emit_conv(item, fuse_bn)
        else:
            module = copy.deepcopy(item)
            if isinstance(module, nn.ReLU):
                module.inplace = True
            modules.append(module)
    return nn.Sequential(*modules)


def _emit_conv(layer: ConvLayer, fuse_bn: bool) -> list[nn.Module]:
    out = layer.out_channels
    # Built in float64 so no weight is rounded before the final cast.
    f64 = dict(dtype=torch.float64, device=layer.weight.device)
    conv = skip_init(nn.Conv2d, layer.in_channels, out, layer.kernel, layer.stride, layer.padding,
                     layer.dilation, layer.groups, bias=fuse_bn, **f64)
    modules: list[nn.Module] = [conv]
    if fuse_bn:
        w, b = layer.fused()
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    else:
        bn_params = layer.bn or BNParams.identity(out)
        if layer.bn is None:  # merged conv: its bias becomes the identity BN's shift
            bn_params = replace(bn_params, bias=layer.bias.clone())
            bias_in_mean = torch.zeros(out, dtype=torch.float64)
        else:  # BN(z + b) == BN with running mean shifted by -b
            bias_in_mean = layer.bias
        bn = nn.BatchNorm2d(out, eps=bn_params.eps, **f64)
        bn.weight.copy_(bn_params.weight)
        bn.bias.copy_(bn_params.bias)
        bn.running_mean.copy_(bn_params.mean - bias_in_mean)
        bn.running_var.copy_(bn_params.var)
        conv.weight.copy_(layer.weight)
        modules.append(bn)
    if layer.act is not None:
        if bool((layer.act == 0).all()):
            modules.append(nn.ReLU(inplace=True))
        elif not bool((layer.act == 1).all()):
            prelu = nn.PReLU(out, **f64)
            prelu.weight.copy_(layer.act)
            modules.append(prelu)
    return modules
