"""The RM operation (paper §3.1-3.2) and RepVGG branch fusion, on `ConvLayer`s.

A residual block  y = act(main(x) + shortcut(x))  with main = L1 -> ... -> Ln (Ln linear) becomes
a plain chain of n layers:
  * reserve: L1 gets extra output channels that carry the reserved tensor r, identity BN and an
    activation that keeps it (ReLU when r >= 0, else PReLU with slope 1);
  * pass: L2..L(n-1) get Dirac filters that copy r (in their own groups when the conv is grouped),
    taking on each layer's stride so that r follows the main branch's resolution;
  * merge: Ln gets extra input channels whose kernel adds r back: Dirac for an identity shortcut,
    or the shortcut's 1x1 conv (BN folded) in place of the removed downsample branch.
Two downsample schemes (§3.2): "reserve_input" (Fig. 2b, the default) reserves x itself and merges
with the 1x1 shortcut kernel; "reserve_shortcut" (Fig. 2a) computes the shortcut in L1 and
reserves its (signed) output with PReLU slope 1, merging with a Dirac kernel. Beyond the paper: an
average-pool shortcut (ResNet-D), a gate (SE, ECA) on the branch before the addition, and a
shortcut that reads x scaled per channel (the authors' pruning network: relu(mask * x) on x >= 0).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn

from .layer import BNParams, ConvLayer, identity_slopes, relu_slopes
from .ops import ConversionError, block_diag, dirac, embed_kernel, kernel_center, to_dense

SCHEMES = ("reserve_input", "reserve_shortcut")


def _cat_act(a: torch.Tensor | None, b: torch.Tensor, channels_a: int) -> torch.Tensor:
    return torch.cat([a if a is not None else identity_slopes(channels_a), b])


def _cat_bn(layer: ConvLayer, extra: int) -> BNParams | None:
    if layer.bn is None:
        return None
    return layer.bn.cat(BNParams.identity(extra, layer.bn.eps))


def reserve(layer: ConvLayer, weight: torch.Tensor, bias: torch.Tensor, act: torch.Tensor, window: int = 1
            ) -> ConvLayer:
    """Add output channels computed from the same input by a 1x1 (or same-size) `weight`, averaged
    over `window` x `window` pixels where the layer carries an average-pool shortcut's stride."""
    center = kernel_center(layer)
    extra = embed_kernel(weight, layer.kernel, center, window)
    return replace(layer, weight=torch.cat([to_dense(layer.weight, layer.groups), extra]),
                   bias=torch.cat([layer.bias, bias]), groups=1,
                   bn=_cat_bn(layer, weight.shape[0]), act=_cat_act(layer.act, act, layer.out_channels))


def pass_through(layer: ConvLayer, channels: int, act: torch.Tensor, window: int = 1) -> ConvLayer:
    """Extend `layer` to also copy `channels` extra input channels to extra outputs (Dirac, or the
    average of a `window` x `window` block)."""
    center = kernel_center(layer)
    in_pg, out_pg = layer.weight.shape[1], layer.out_channels // layer.groups
    if in_pg == out_pg and channels % in_pg == 0:
        # The reserved channels get their own Dirac groups of the same width (Table 4); a dense
        # conv becomes one group among them, which costs far less than a dense block-diagonal.
        weight = torch.cat([layer.weight, dirac(channels, layer.kernel, center, group_size=in_pg, window=window)])
        groups = layer.groups + channels // in_pg
    else:
        weight = block_diag(to_dense(layer.weight, layer.groups), dirac(channels, layer.kernel, center, window=window))
        groups = 1
    zeros = torch.zeros(channels, dtype=torch.float64)
    return replace(layer, weight=weight, bias=torch.cat([layer.bias, zeros]), groups=groups,
                   bn=_cat_bn(layer, channels), act=_cat_act(layer.act, act, layer.out_channels))


def merge(layer: ConvLayer, weight: torch.Tensor, bias: torch.Tensor, act: torch.Tensor | None, window: int = 1
          ) -> ConvLayer:
    """Add extra input channels whose 1x1 `weight` is summed into `layer`'s (BN-folded) output."""
    center = kernel_center(layer)
    w, b = layer.fused()
    extra = embed_kernel(weight, layer.kernel, center, window)
    return ConvLayer(torch.cat([to_dense(w, layer.groups), extra], dim=1), b + bias, layer.stride,
                     layer.padding, layer.dilation, 1, None, act)


def rm_residual(main: list[ConvLayer], shortcut: ConvLayer | None, act: torch.Tensor | None,
                input_nonneg: bool, scheme: str = "reserve_input", pool: int = 1, gate: bool = False,
                input_scale: torch.Tensor | None = None) -> list[ConvLayer]:
    """Plain chain equal to act(main(x) + shortcut(x)); shortcut None means identity.

    pool > 1: the shortcut averages pool x pool windows (stride pool) before its 1x1 conv (ResNet-D).
    The branch layer that carries the stride averages the reserved channels over the same window
    instead of picking the centre pixel; equal where every window lies inside the input (even
    sizes for pool 2: an odd-sized input makes the pool average a partial last window).
    gate: a gate (SE, ECA) scales main(x) before the addition. Ln then keeps its output (activated or
    not) and the reserved channels apart (the gate goes after it, on the first Ln.out_channels
    channels) and an extra 1x1 conv adds them: the chain has n + 1 layers.
    input_scale: the shortcut reads input_scale * x (per channel, >= 0, so that reserved channels stay
    non-negative): the kernel that reads x for the shortcut (the reserved rows, the shortcut conv
    computed in L1, or the one layer's added kernel) takes it on its input channels.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"downsample scheme must be one of {SCHEMES}, got {scheme!r}")
    # Behind a gate, Ln keeps its output apart from the reserved channels: it may end activated (the legacy
    # SENet's BasicBlock: ReLU, SE, add).
    if (main[-1].act is not None and not gate) or any(layer.act is None for layer in main[:-1]):
        raise ConversionError("a residual branch must be conv layers with activations, ending linear (or gated)")
    c_in, c_out = main[0].in_channels, main[-1].out_channels
    stride = tuple(math.prod(layer.stride[i] for layer in main) for i in range(2))
    windows = _windows(main, pool)
    if shortcut is None:
        if c_in != c_out or stride != (1, 1):
            raise ConversionError(f"identity shortcut but the branch maps {c_in}->{c_out} channels "
                                  f"with stride {stride}")
        s_w = dirac(c_in, (1, 1), (0, 0))
        s_b = torch.zeros(c_in, dtype=torch.float64)
    else:
        if shortcut.kernel != (1, 1) or shortcut.padding != (0, 0) or shortcut.groups != 1:
            raise ConversionError("only 1x1, unpadded, ungrouped shortcut convs can be merged")
        if tuple(s * pool for s in shortcut.stride) != stride:
            raise ConversionError(f"shortcut stride {shortcut.stride} (after a {pool}x{pool} pool) differs from "
                                  f"the branch's {stride}")
        s_w, s_b = shortcut.fused()

    if len(main) == 1 and not gate:  # a one-layer branch needs no reserving: add the shortcut kernel directly
        w, b = main[0].fused()
        s_w = _scale_inputs(s_w, input_scale)
        w = to_dense(w, main[0].groups) + embed_kernel(s_w, main[0].kernel, kernel_center(main[0]), windows[0])
        return [replace(main[0], weight=w, bias=b + s_b, groups=1, bn=None, act=act)]

    if scheme == "reserve_shortcut" and shortcut is not None:
        # Fig. 2a: L1 computes the shortcut; its output may be negative, so PReLU keeps it.
        n_res, first_w, first_b = c_out, _scale_inputs(s_w, input_scale), s_b
        res_act, merge_w = identity_slopes(c_out), dirac(c_out, (1, 1), (0, 0))
        merge_b = torch.zeros(c_out, dtype=torch.float64)
    else:
        n_res, first_w = c_in, _scale_inputs(dirac(c_in, (1, 1), (0, 0)), input_scale)
        first_b = torch.zeros(c_in, dtype=torch.float64)
        res_act = relu_slopes(c_in) if input_nonneg else identity_slopes(c_in)
        merge_w, merge_b = s_w, s_b

    chain = [reserve(main[0], first_w, first_b, res_act, windows[0])]
    if gate:
        chain += [pass_through(layer, n_res, res_act, w) for layer, w in zip(main[1:], windows[1:])]
        add = torch.cat([dirac(c_out, (1, 1), (0, 0)), merge_w], dim=1)
        return chain + [ConvLayer(add, merge_b.clone(), act=act)]
    chain += [pass_through(layer, n_res, res_act, w) for layer, w in zip(main[1:-1], windows[1:-1])]
    chain.append(merge(main[-1], merge_w, merge_b, act, windows[-1]))
    return chain


def _scale_inputs(weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return weight if scale is None else weight * scale.view(1, -1, 1, 1)


def scale_output(layer: ConvLayer, scale: torch.Tensor) -> ConvLayer:
    """`layer`'s output times `scale` per channel, before its activation: in its BN, else its conv
    (a mask conv, network slimming's per-channel scale, folded into the conv before it)."""
    if layer.bn is not None:
        return replace(layer, bn=replace(layer.bn, weight=layer.bn.weight * scale, bias=layer.bn.bias * scale))
    return replace(layer, weight=layer.weight * scale.view(-1, 1, 1, 1), bias=layer.bias * scale)


def _windows(main: list[ConvLayer], pool: int) -> list[int]:
    """Per branch layer, the window its reserved channels average: `pool` at the one strided layer."""
    if pool == 1:
        return [1] * len(main)
    strided = [i for i, layer in enumerate(main) if layer.stride != (1, 1)]
    if len(strided) != 1 or main[strided[0]].stride != (pool, pool):
        raise ConversionError(f"an average-pool shortcut ({pool}x{pool}) needs one branch layer with stride {pool}")
    layer = main[strided[0]]
    center = kernel_center(layer)
    if layer.dilation != (1, 1) or any(c + pool > k for c, k in zip(center, layer.kernel)):
        raise ConversionError(f"the shortcut averages {pool}x{pool} windows, which the branch's strided conv "
                              f"(kernel {layer.kernel}, padding {layer.padding}, dilation {layer.dilation}) cannot "
                              f"read from one output position")
    return [pool if i == strided[0] else 1 for i in range(len(main))]


def fuse_branches(branches: list[ConvLayer], identity: BNParams | None = None,
                  identity_offset: int = 0) -> ConvLayer:
    """RepVGG re-parameterisation: parallel conv+BN branches (and an identity BN) summed -> one conv.

    Branches share input, stride and groups; smaller kernels are embedded at the largest one's
    centre. Output j of the identity branch is BN(x[identity_offset + j]).
    """
    big = max(branches, key=lambda layer: layer.kernel[0] * layer.kernel[1])
    center = kernel_center(big)
    weight = torch.zeros_like(big.weight)
    bias = torch.zeros(big.out_channels, dtype=torch.float64)
    for layer in branches:
        if layer.groups != big.groups or layer.stride != big.stride:
            raise ConversionError("RepVGG branches must share groups and stride")
        kernel_center(layer)
        w, b = layer.fused()
        weight += embed_kernel(w, big.kernel, center) if layer.kernel != big.kernel else w
        bias += b
    if identity is not None:
        scale, shift = identity.scale_shift()
        ident = dirac(big.out_channels, big.kernel, center, group_size=big.weight.shape[1], in_offset=identity_offset)
        weight += ident * scale.view(-1, 1, 1, 1)
        bias += shift
    return ConvLayer(weight, bias, big.stride, big.padding, big.dilation, big.groups)


def compose(first: ConvLayer, second: ConvLayer) -> ConvLayer | None:
    """One conv equal to `second(first(x))` for a `first` without activation (paper eq. 4), or None
    when no single conv is exactly equal.

    Only dense convs are composed: folding a grouped conv into a dense one multiplies its cost.
    `second` pointwise: the result has `first`'s geometry. `first` pointwise: the result has
    `second`'s geometry, exact only if `second` does not zero-pad `first`'s biased output (a padded
    pixel is 0, while the composed conv would see `first`'s bias there).
    """
    if first.act is not None:
        raise ValueError("only a layer without activation can be composed with the next one")
    if first.groups != 1 or second.groups != 1:
        return None
    w1, b1 = first.fused()
    w2 = second.weight
    pointwise = second.kernel == (1, 1) and second.stride == (1, 1) and second.padding == (0, 0)
    if pointwise:
        weight = torch.einsum("om,mikl->oikl", w2[:, :, 0, 0], w1)
        return replace(first, weight=weight, bias=second.bias + w2[:, :, 0, 0] @ b1, bn=second.bn,
                       act=second.act)
    if first.kernel == (1, 1) and first.stride == (1, 1) and first.padding == (0, 0):
        if second.padding != (0, 0) and bool(b1.ne(0).any()):
            return None
        weight = torch.einsum("omkl,mi->oikl", w2, w1[:, :, 0, 0])
        return replace(second, weight=weight, bias=second.bias + w2.sum((2, 3)) @ b1)
    return None


def avg_pool_window(pool: nn.Module) -> int | None:
    """The window of an unpadded average pool whose square window equals its stride (a conv can hold it at
    multiples of the window); None for any other module."""
    if type(pool) is nn.AvgPool2d and pool.kernel_size == pool.stride and pool.padding in (0, (0, 0)) \
            and pool.divisor_override is None:
        k = pool.kernel_size
        if isinstance(k, int):
            return k
        if len(set(k)) == 1:
            return k[0]
    return None


def after_avg_pool(second: ConvLayer, window: int) -> ConvLayer | None:
    """One conv equal to `second(avg_pool(x))` for an unpadded average pool whose window equals its stride (an
    anti-aliasing pool inside a residual branch), or None for a dilated `second`. Each tap of `second` becomes a
    window x window patch of weight / window^2: the result strides by both, pads `second`'s padding in whole
    patches (zero, as the pool's output there is) and keeps `second`'s groups. Exact where H and W are multiples
    of `window` (else the pool drops or, in ceil mode, shrinks the last partial window, which the result does
    not), so its caller checks the input size; the chain composes it into `second` rather than keep a pool that
    the reserved channels would pass."""
    if second.dilation != (1, 1):
        return None
    out, in_pg, kh, kw = second.weight.shape
    patch = second.weight[:, :, :, None, :, None].expand(-1, -1, -1, window, -1, window) / window ** 2
    return replace(second, weight=patch.reshape(out, in_pg, kh * window, kw * window),
                   stride=(second.stride[0] * window, second.stride[1] * window),
                   padding=(second.padding[0] * window, second.padding[1] * window))


def split_output(layer: ConvLayer, bn: BNParams, keep_raw: bool) -> ConvLayer:
    """Give a linear `layer` the pre-activation ReLU(bn(.)) of the next (pre-activation) block.

    keep_raw: also output the raw result (identity activation) after the activated copy, for a
    block whose identity shortcut reads the signed tensor before its BN and ReLU.
    """
    if layer.act is not None:
        raise ConversionError("a pre-activation BN must follow a conv without activation")
    if layer.bn is not None:
        layer = layer.fold_bn()  # two BNs in a row: the first folds into the weights
    c = layer.out_channels
    if not keep_raw:
        return replace(layer, bn=bn, act=relu_slopes(c))
    weight = to_dense(layer.weight, layer.groups)
    return replace(layer, weight=torch.cat([weight, weight]), bias=torch.cat([layer.bias, layer.bias]),
                   groups=1, bn=bn.cat(BNParams.identity(c, bn.eps)),
                   act=torch.cat([relu_slopes(c), identity_slopes(c)]))
