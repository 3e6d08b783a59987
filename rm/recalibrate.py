"""Data statistics for the identity BatchNorms of a converted model (paper appendix A.3).

`rm.convert(model, fuse_bn=False)` puts an identity BatchNorm on every channel the RM operation
adds (reserved and passed-through inputs) and on every merged conv: paper eq. 2 with statistics
0 / 1, so the function is exact in eval mode. Fine-tuning switches BatchNorm to batch statistics,
and those channels would then be normalised although their real statistics are far from 0 / 1.
The paper measures each channel's mean and variance on training data and uses them as the running
statistics, with weight = sqrt(var + eps) and bias = mean (eq. 2), which keeps the BN an identity.
`recalibrate_identity_bn` does that; a channel that also added a constant (a merged conv's bias,
carried as the identity BN's shift) keeps it, so the plain model computes exactly what it did.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn


def identity_channels(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Boolean mask of the channels on which `bn` (eval mode) only adds a constant, i.e. its weight
    equals sqrt(running_var + eps): the identity BNs of eq. 2, whatever shift they carry."""
    if bn.running_var is None or not bn.affine:
        return torch.zeros(bn.num_features, dtype=torch.bool)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return (scale - 1).abs() <= 8 * torch.finfo(scale.dtype).eps


@torch.no_grad()
def recalibrate_identity_bn(model: nn.Module, batches: Iterable, num_batches: int | None = None,
                            progress: Callable[[Iterable], Iterable] | None = None) -> int:
    """Set the running statistics of every identity BatchNorm channel of `model` (a plain model from
    `rm.convert(..., fuse_bn=False)`) to the statistics of its input over `batches`, keeping the
    model's eval-mode output unchanged. Returns the number of channels recalibrated.

    `batches` yields image tensors or (images, labels) pairs, e.g. a training DataLoader;
    `num_batches` caps how many are used; `progress` may wrap the batches (e.g. in a tqdm bar). The
    pass runs in eval mode, so every BN sees the activations of the model as it will start fine-tuning.
    """
    targets = {bn: mask for bn in model.modules() if isinstance(bn, nn.BatchNorm2d)
               for mask in [identity_channels(bn)] if mask.any()}
    if not targets:
        raise ValueError("the model has no identity BatchNorm channels to recalibrate; convert it with "
                         "rm.convert(model, fuse_bn=False) first")
    sums = {bn: torch.zeros(3, bn.num_features, dtype=torch.float64, device=bn.weight.device) for bn in targets}

    def accumulate(bn: nn.BatchNorm2d, args) -> None:
        x = args[0].detach().to(torch.float64).transpose(0, 1).flatten(1)  # channels x values
        sums[bn] += torch.stack([torch.full_like(x[:, 0], x.shape[1]), x.sum(1), (x * x).sum(1)])

    handles = [bn.register_forward_pre_hook(accumulate) for bn in targets]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        seen = 0
        for batch in progress(batches) if progress is not None else batches:
            if num_batches is not None and seen >= num_batches:
                break
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(images.to(device=param.device, dtype=param.dtype))
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not seen:
        raise ValueError("no batches to compute BatchNorm statistics from")

    for bn, mask in targets.items():
        count, total, squares = sums[bn]
        mean = total / count
        # Unbiased, as BatchNorm's own running_var.
        var = ((squares - count * mean * mean) / (count - 1).clamp(min=1)).clamp(min=0)
        shift = bn.bias.detach().to(torch.float64) - bn.running_mean.to(torch.float64)
        new = {"running_mean": mean, "running_var": var, "weight": torch.sqrt(var + bn.eps), "bias": mean + shift}
        for name, value in new.items():
            tensor = getattr(bn, name)
            tensor.data[mask] = value[mask].to(tensor.dtype)
    return sum(int(mask.sum()) for mask in targets.values())
