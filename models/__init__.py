"""Residual (training-time) model families and their registry."""
from . import mobilenet, preact_resnet, repvgg, repvgg_resnet, resnet, rmnet  # noqa: F401  (importing registers the models)
from .registry import (
    INPUT_SIZE,
    STEMS,
    UnknownModelError,
    create_model,
    list_models,
    model_family,
    model_stems,
)

__all__ = ["create_model", "list_models", "model_family", "model_stems", "UnknownModelError", "STEMS", "INPUT_SIZE"]

from .timm_compat import register_with_timm  # noqa: E402

register_with_timm()
