"""Parameter and multiply-add counts.

MACs come from PyTorch's own `torch.utils.flop_counter` (conv and matmul FLOPs / 2, so bias adds
are not counted). `paper_flops` adds the paper's convention on top: one operation per BatchNorm
and per ReLU output element (see docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass per image (conv + linear)."""
    param = next(model.parameters())
    x = torch.zeros(batch, 3, input_size, input_size, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // (2 * batch)


# The paper counts one operation per output element of these layers on top of the MACs.
_PAPER_ELEMENTWISE = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.PReLU)


def paper_flops(model: nn.Module, input_size: int, batch: int = 1) -> int:
    """The RMNet paper's "FLOPs" per image: conv/linear multiply-adds (bias not counted) plus one
    operation per BatchNorm and per ReLU output element. With this rule torchvision's ResNet-18..152,
    ResNeXt-50/101 and VGG16 reproduce the paper's printed values to the last digit."""
    elements = 0

    def count(module: nn.Module, args, out: torch.Tensor) -> None:
        nonlocal elements
        elements += out.numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, _PAPER_ELEMENTWISE)]
    try:
        macs = count_macs(model, input_size, batch)
    finally:
        for handle in handles:
            handle.remove()
    return macs + elements // batch
