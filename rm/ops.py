"""Tensor-level operations on conv kernels: densify grouped kernels, Dirac kernels, padding a small
kernel into a larger one at the position that keeps the two convolutions aligned."""
from __future__ import annotations

import torch

from .layer import ConvLayer, Pair


class ConversionError(ValueError):
    """The model cannot be converted exactly; the message says which module and why."""


def kernel_center(layer: ConvLayer) -> Pair:
    """Tap of `layer`'s kernel that reads input pixel (stride * i) for output pixel i.

    A Dirac filter at this tap copies the (strided) input, exactly as a 1x1 conv with the same
    stride and no padding does; it exists when padding is a multiple of dilation inside the kernel.
    """
    center = []
    for k, p, d in zip(layer.kernel, layer.padding, layer.dilation):
        if p % d or p // d >= k:
            raise ConversionError(
                f"a conv with kernel {layer.kernel}, padding {layer.padding} and dilation "
                f"{layer.dilation} is not centred: no Dirac filter can carry its input through")
        center.append(p // d)
    return tuple(center)


def to_dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped kernel (out, in/groups, kh, kw) -> equivalent dense kernel (out, in, kh, kw)."""
    if groups == 1:
        return weight
    out, in_pg = weight.shape[:2]
    out_pg = out // groups
    dense = weight.new_zeros(out, in_pg * groups, *weight.shape[2:])
    for g in range(groups):
        dense[g * out_pg:(g + 1) * out_pg, g * in_pg:(g + 1) * in_pg] = weight[g * out_pg:(g + 1) * out_pg]
    return dense


def window_taps(center: Pair, window: int) -> list[Pair]:
    """The taps from `center` that read a window x window block of input pixels, starting at the one
    the centre reads (an average-pool shortcut's window, carried by the conv that has its stride)."""
    return [(center[0] + a, center[1] + b) for a in range(window) for b in range(window)]


def embed_kernel(weight: torch.Tensor, kernel: Pair, center: Pair, window: int = 1) -> torch.Tensor:
    """Place a 1x1 kernel at tap `center` of a zero `kernel`-sized kernel; with a `window`, spread
    it evenly over the window x window taps from there (the 1x1 conv of an average pool)."""
    if tuple(weight.shape[2:]) == tuple(kernel) and window == 1:
        return weight
    if tuple(weight.shape[2:]) != (1, 1):
        raise ConversionError(f"cannot align a {tuple(weight.shape[2:])} kernel with a {kernel} kernel")
    out = weight.new_zeros(*weight.shape[:2], *kernel)
    for tap in window_taps(center, window):
        out[:, :, tap[0], tap[1]] = weight[:, :, 0, 0] / window ** 2
    return out


def dirac(channels: int, kernel: Pair, center: Pair, group_size: int | None = None, in_offset: int = 0,
          in_channels: int | None = None, window: int = 1) -> torch.Tensor:
    """Kernel whose output channel i copies input channel in_offset + i (paper eq. 1); with a
    `window`, averages it over the window x window pixels from the centre tap on.

    With a group_size the kernel is laid out for a grouped conv whose groups are group_size wide
    (1: depthwise), channel i reading (i + in_offset) mod group_size of its group; otherwise it is
    dense over `in_channels` (default: channels + in_offset) inputs.
    """
    idx = torch.arange(channels)
    if group_size is not None:
        w = torch.zeros(channels, group_size, *kernel, dtype=torch.float64)
        col = (idx + in_offset) % group_size
    else:
        n_in = in_channels if in_channels is not None else channels + in_offset
        w = torch.zeros(channels, n_in, *kernel, dtype=torch.float64)
        col = idx + in_offset
    for tap in window_taps(center, window):
        w[idx, col, tap[0], tap[1]] = 1.0 / window ** 2
    return w


def block_diag(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dense kernels of two convs on disjoint inputs -> one conv on the concatenated input."""
    out = a.new_zeros(a.shape[0] + b.shape[0], a.shape[1] + b.shape[1], *a.shape[2:])
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0]:, a.shape[1]:] = b
    return out
