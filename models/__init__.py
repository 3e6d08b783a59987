"""Residual (training-time) model families, their registry and the typed model spec.

Each family module defines its blocks, registers their RM converters (`rm.register_converter`) and
registers its variants (`register_model`); adding a family is one file here (docs/ARCHITECTURE.md).
"""
from . import mobilenet, preact_resnet, repvgg, repvgg_resnet, resnet, rmnet, rmnet_pruning  # noqa: F401  (importing registers the models)
from .registry import (
    INPUT_SIZE,
    STEMS,
    UnknownModelError,
    create_model,
    list_models,
    model_family,
    model_stems,
)
from .spec import ConversionSettings, InputSpec, ModelSpec

__all__ = ["create_model", "list_models", "model_family", "model_stems", "UnknownModelError", "STEMS", "INPUT_SIZE",
           "ModelSpec", "InputSpec", "ConversionSettings"]

from .timm_compat import register_with_timm  # noqa: E402

register_with_timm()
