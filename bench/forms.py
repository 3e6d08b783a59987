"""The forms a model is timed in: as trained, with BatchNorm folded into the convs before it (how a
residual model is deployed, and how the pruners and the latency table read a model's cost) and plain
(RM-converted)."""
from __future__ import annotations

import torch.nn as nn
from torch.fx.experimental.optimization import fuse

import rm
from models import ModelSpec


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` with every Conv2d -> BatchNorm2d pair folded into the conv (torch.fx;
    eval-mode statistics). BatchNorms that follow no conv (RepVGG identity branches) stay."""
    return fuse(model.eval(), inplace=False).eval()


def build_forms(model: nn.Module, spec: ModelSpec, forms: list[str]) -> dict[str, nn.Module]:
    """The requested forms of `model`; a plain model has only its plain form."""
    if spec.form == "plain":
        return {"plain": model.eval()} if "plain" in forms else {}
    builders = {"residual": lambda m: m, "bn_folded": fold_bn, "plain": rm.convert}
    return {form: builders[form](model.eval()) for form in forms}
