"""Numerical equivalence check between a residual model and its plain conversion."""
from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn as nn

from .deploy import allowed_size
from .walker import convert


def output_error(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """Max absolute error of `out` against `ref`, and that error relative to max|ref|."""
    err = (ref.detach().double().cpu() - torch.as_tensor(out).double().cpu()).abs().max().item()
    return {"max_abs": err, "max_rel": err / max(ref.detach().abs().max().item(), 1e-30)}


def randomize_bn(model: nn.Module, seed: int = 0, gamma_scale: float = 1.0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics (default BN
    statistics are an identity map and hide conversion bugs); returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_((torch.rand(c, generator=g) + 0.5) * gamma_scale)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
    return model.eval()


@torch.no_grad()
def verify(model: nn.Module, plain: nn.Module, input_size: int = 224, batch: int = 2,
           dtypes: Iterable[torch.dtype] = (torch.float64, torch.float32), seed: int = 0,
           scale: float = 1.0) -> dict[str, dict[str, float]]:
    """Max absolute and relative error of `plain` against `model` on random N(0, scale^2) input.

    Relative error is max|plain - model| / max|model|. Both models run in eval mode on copies, so
    neither argument is modified. A plain model exact only at some sizes (`rm.deploy.InputSizeCheck`)
    is checked at the smallest size it accepts from `input_size` up.
    """
    input_size = allowed_size(plain, input_size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, input_size, input_size, generator=gen, dtype=torch.float64) * scale
    device = next(model.parameters()).device
    report = {}
    for dtype in dtypes:
        a = copy.deepcopy(model).to(dtype).eval()
        b = copy.deepcopy(plain).to(dtype).eval()
        xi = x.to(device=device, dtype=dtype)
        report[str(dtype).replace("torch.", "")] = output_error(a(xi), b(xi))
    return report


def verify_conversion(model: nn.Module, input_size: int = 224, batch: int = 2, seed: int = 0,
                      dtypes: Iterable[torch.dtype] = (torch.float64, torch.float32),
                      **convert_kwargs) -> dict[str, dict[str, float]]:
    """Convert a copy of `model` in each dtype and compare it with that copy.

    Converting in float64 keeps the fused weights in float64, so the float64 figure measures the
    conversion itself rather than the float32 rounding of the deploy weights.
    """

    report = {}
    for dtype in dtypes:
        ref = copy.deepcopy(model).to(dtype).eval()
        plain = convert(ref, **convert_kwargs)
        report.update(verify(ref, plain, input_size, batch, (dtype,), seed))
    return report


def convert_verified(model: nn.Module, input_size: int = 224, batch: int = 2, seed: int = 0, float64: bool = True,
                     **convert_kwargs) -> tuple[nn.Module, dict[str, dict[str, float]]]:
    """`convert(model)` plus the `verify_conversion` report, without converting the model's own dtype
    twice: the returned plain model is the one the float32 figure measures. `float64=False` leaves out
    the float64 conversion and check (two thirds of the time on a ResNet-152: a second conversion and two
    float64 forward passes), for large models whose float32 check is enough to refuse a broken one."""

    plain = convert(model, **convert_kwargs)
    report = verify_conversion(model, input_size, batch, seed, dtypes=(torch.float64,), **convert_kwargs) \
        if float64 else {}
    report.update(verify(model, plain, input_size, batch, (torch.float32,), seed))
    return plain, report
