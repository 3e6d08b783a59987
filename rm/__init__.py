"""The RM converter: residual model in, plain (VGG-like) deploy model out, same outputs."""
from . import blocks  # noqa: F401  (importing registers the block converters)
from .convert import Context, convert, register_converter, registered_types
from .deploy import load_deploy, save_deploy
from .layer import BNParams, ConvLayer
from .ops import ConversionError
from .verify import convert_verified, verify, verify_conversion

__all__ = ["convert", "convert_verified", "verify", "verify_conversion", "register_converter", "registered_types", "Context", "ConvLayer",
           "BNParams", "ConversionError", "save_deploy", "load_deploy"]
