"""The RM converter: residual model in, plain (VGG-like) deploy model out, same outputs.

Imports torch and nothing else, so that deploy artifacts load wherever torch does
(tests/test_architecture.py checks it). Model families register converters for their blocks with
`register_converter`; converters for torchvision's and timm's ResNet families are built in (named by
import path: neither library is imported).
"""
from . import blocks, graph, timm_resnet  # noqa: F401  (importing registers the graph pass and the built-in converters)
from .deploy import DeployFormatError, SqueezeExcite, load_deploy, save_deploy
from .io import CheckpointError, atomic_path, atomic_save, load_file
from .layer import BNParams, ConvLayer
from .ops import ConversionError
from .recalibrate import recalibrate_identity_bn
from .verify import convert_verified, output_error, verify, verify_conversion
from .walker import Context, convert, register_converter, registered_types

__all__ = ["convert", "convert_verified", "verify", "verify_conversion", "output_error", "register_converter",
           "registered_types", "Context", "ConvLayer", "BNParams", "ConversionError", "SqueezeExcite",
           "save_deploy", "load_deploy", "DeployFormatError", "CheckpointError", "atomic_path", "atomic_save", "load_file",
           "recalibrate_identity_bn"]
