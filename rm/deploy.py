"""Deploy artifacts: a plain model saved as an architecture spec plus a state dict.

The file holds only dicts, lists, strings, numbers and tensors, so `torch.load(weights_only=True)`
reads it and `load_deploy` rebuilds the chain from torch.nn modules alone: no class of this project
is needed to run a deployed model. The exceptions are `SqueezeExcite` and `InputSizeCheck`, defined here
so that this file stays self-contained: a plain chain of an SE model needs a gate that only some channels
pass, and a chain exact only at some input sizes records them and refuses the others.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .io import CheckpointError, atomic_save, load_file

FORMAT = "rmnet-deploy"
VERSION = 1


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation on the first `gated` of `channels` channels; the others pass unchanged.

    In a converted SE block those others are the RM-reserved channels: they carry the block input
    to the merging conv and must not be scaled by the gate, nor take part in its average.
    """

    def __init__(self, channels: int, reduced: int, gated: int | None = None):
        super().__init__()
        gated = channels if gated is None else gated
        if not 0 < gated <= channels:
            raise ValueError(f"gated must be in [1, {channels}], got {gated}")
        self.channels, self.reduced, self.gated = channels, reduced, gated
        self.fc1 = nn.Conv2d(gated, reduced, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, gated, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x[:, : self.gated]
        scale = torch.sigmoid(self.fc2(self.relu(self.fc1(g.mean((2, 3), keepdim=True)))))
        if self.gated == self.channels:
            return x * scale
        return torch.cat([g * scale, x[:, self.gated:]], dim=1)


class InputSizeCheck(nn.Module):
    """First layer of a plain chain that equals its residual model only when the input's height and width
    are multiples of `multiple` (ResNet-D average-pool shortcuts: timm's pool averages a partial border
    window over fewer pixels, the merged strided conv always over all of them). Other sizes raise
    instead of giving a silently wrong answer: in eager mode with a one-line ValueError; in a traced or
    exported graph (TorchScript, ONNX), where a Python `if` on the size would be fixed at the example's
    size, as a reshape to (..., H/m, m, W/m, m) and back, which the runtime computes from the input's
    shape and cannot do for other sizes (ONNX Runtime: "cannot be reshaped to the requested shape")."""

    def __init__(self, multiple: int):
        super().__init__()
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            return x.reshape(*x.shape[:-2], h // m, m, w // m, m).reshape(x.shape)
        if h % m or w % m:
            raise ValueError(f"input size {h}x{w}: this plain model is exact only for input H and W multiples "
                             f"of {m}; resize or pad the input")
        return x

    def extra_repr(self) -> str:
        return f"multiple={self.multiple}"


def input_multiple(plain: nn.Module) -> int:
    """What input H and W must be a multiple of for `plain` to be exact (its `InputSizeCheck`; 1: any size)."""
    return max((m.multiple for m in plain.modules() if isinstance(m, InputSizeCheck)), default=1)


def allowed_size(plain: nn.Module, size: int) -> int:
    """The smallest input size >= `size` that `plain` accepts (its `InputSizeCheck`, if any)."""
    multiple = input_multiple(plain)
    return -(-size // multiple) * multiple


_SPEC_FIELDS: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum"),
    nn.ReLU: (),
    nn.PReLU: ("num_parameters",),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.AdaptiveMaxPool2d: ("output_size",),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Linear: ("in_features", "out_features"),
    SqueezeExcite: ("channels", "reduced", "gated"),
    InputSizeCheck: ("multiple",),
}
_BY_NAME = {cls.__name__: cls for cls in _SPEC_FIELDS}


class DeployFormatError(CheckpointError):
    """The file is not a deploy artifact this version can read."""


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def to_spec(plain: nn.Sequential) -> list[dict[str, Any]]:
    spec = []
    for i, module in enumerate(plain):
        fields = _SPEC_FIELDS.get(type(module))
        if fields is None:
            raise TypeError(f"layer {i} ({type(module).__name__}) is not a plain-chain module")
        entry = {"type": type(module).__name__, **{f: _plain(getattr(module, f)) for f in fields}}
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            entry["bias"] = module.bias is not None
        spec.append(entry)
    return spec


def from_spec(spec: list[dict[str, Any]]) -> nn.Sequential:
    layers = []
    for i, entry in enumerate(spec):
        entry = dict(entry)
        cls = _BY_NAME.get(entry.pop("type", None))
        if cls is None:
            raise DeployFormatError(f"layer {i} has an unknown type; known: {sorted(_BY_NAME)}")
        layers.append(cls(**entry))
    return nn.Sequential(*layers)


def build_plain(layers: list[dict[str, Any]], state_dict: dict[str, torch.Tensor], origin: str = "<artifact>"
                ) -> nn.Sequential:
    """The plain chain of a layer list with its weights, in eval mode and in the weights' dtype."""
    try:
        floats = [v.dtype for v in state_dict.values() if v.is_floating_point()]
        # Cast before loading: load_state_dict copies into the existing (float32) parameters, which
        # would round a float64 artifact.
        model = from_spec(layers).to(floats[0] if floats else torch.float32)
        model.load_state_dict(state_dict)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        # A damaged or hand-edited file: its layer list and weights do not rebuild a model.
        raise DeployFormatError(f"{origin} holds a damaged plain model ({type(e).__name__}: {e}); "
                                f"convert the checkpoint again") from None
    return model.eval()


def save_deploy(plain: nn.Sequential, path: str, meta: dict[str, Any] | None = None) -> None:
    """Write `plain` (from `rm.convert`) atomically with free-form metadata of plain containers
    (model settings, the input it was trained on, the verified conversion error, ...). A chain exact
    only at some input sizes says so in meta["input_multiple"] too (its layer list keeps the check)."""
    state = {k: v.detach().cpu() for k, v in plain.state_dict().items()}
    meta = dict(meta or {})
    if input_multiple(plain) > 1:
        meta["input_multiple"] = input_multiple(plain)
    atomic_save({"format": FORMAT, "version": VERSION, "spec": to_spec(plain), "state_dict": state,
                 "meta": meta}, path)


def load_deploy(path: str, map_location: str | torch.device = "cpu") -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild a deploy artifact; returns (plain model in eval mode, metadata)."""
    blob = load_file(path, map_location)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise DeployFormatError(f"{path} is not an RMNet deploy artifact (no format={FORMAT!r} entry)")
    if blob.get("version", 0) > VERSION:
        raise DeployFormatError(f"{path} has deploy format version {blob['version']}; this code reads "
                                f"up to {VERSION}: update RMNet")
    if not isinstance(blob.get("spec"), list) or not isinstance(blob.get("state_dict"), dict):
        raise DeployFormatError(f"{path} is a damaged deploy artifact (no layer list or weights); convert the "
                                f"checkpoint again")
    return build_plain(blob["spec"], blob["state_dict"], path), blob.get("meta", {})
