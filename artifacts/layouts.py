"""State dicts from elsewhere: recognise their key layout and map it onto this project's models.

The weights are taken out of a training checkpoint, a `{"state_dict": ...}` file or a bare state
dict (a DDP `module.` prefix is removed), the layout is recognised from the keys, and mapped:

* ``native``: this project's keys. They equal torchvision's ResNet/ResNeXt keys and the RepVGG
  authors' training-form keys (`stage0.rbr_dense.conv.weight`, `rbr_1x1`, `rbr_identity`,
  `stageN.i.*`, `linear.*`), so those load unchanged.
* ``rmnet-authors``: the RMNet authors' RMNeXt files. Their stem blocks `layer0.{i}` (`stage0.{i}`
  in older files) name the 3x3 and 1x1 branches `conv33/bn33` and `conv11/bn11` (ours: `rbr_dense`
  and `rbr_1x1`); the BatchNorms `running`, `running1`, `running2` only track statistics for
  their pruning experiments, compute nothing, and are dropped.

Refused with the reason: torchvision MobileNetV2 (widths, depth and ReLU6 differ from
`mobilenetv2_rm`, whose shape is fixed by its conversion to MobileNetV1) and deploy-form RepVGG
files (`rbr_reparam`: one fused conv per block, no branches left to load). Any other mismatch is
an error naming the missing, unexpected and wrongly shaped keys.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn as nn

from rm import CheckpointError

StateDict = dict[str, torch.Tensor]

_AUTHORS_STEM = re.compile(r"^(layer0|stage0)\.\d+\.(conv33|bn33|conv11|bn11)\.")
_AUTHORS_STEM_BRANCH = {"conv33": "rbr_dense.conv", "bn33": "rbr_dense.bn", "conv11": "rbr_1x1.conv",
                        "bn11": "rbr_1x1.bn"}
_TRACKING_ONLY = {"running", "running1", "running2"}
_TV_MOBILENETV2 = ("features.1.conv.0.0.weight", "classifier.1.weight")


def extract_state_dict(blob: Any, origin: str = "<checkpoint>") -> StateDict:
    """The model weights inside a training checkpoint, a {"state_dict": ...} file or a bare state
    dict; a DDP `module.` prefix is removed."""
    if isinstance(blob, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not blob or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items()):
        raise CheckpointError(f"{origin} holds no model state dict (expected tensors by parameter name)")
    if all(k.startswith("module.") for k in blob):
        blob = {k[len("module."):]: v for k, v in blob.items()}
    return blob


def map_layout(state: StateDict, origin: str) -> tuple[str, StateDict, list[str]]:
    """(layout name, the state dict with this project's keys, the dropped statistics-only keys)."""
    keys = state.keys()
    if all(k in keys for k in _TV_MOBILENETV2):
        raise CheckpointError(
            f"{origin} is a torchvision MobileNetV2 (17 inverted residual blocks 16..320 wide, a 1280-wide "
            f"head, ReLU6). mobilenetv2_rm has 13 blocks whose widths are fixed by its conversion to "
            f"MobileNetV1 (a 1024-wide head) and uses ReLU so that the conversion is exact: no tensor of "
            f"that file has a counterpart. Train mobilenetv2_rm from scratch instead.")
    if any(".rbr_reparam." in k for k in keys):
        raise CheckpointError(
            f"{origin} is a deploy-form RepVGG checkpoint (`rbr_reparam`: one fused conv per block). "
            f"Load the training-form file (rbr_dense/rbr_1x1/rbr_identity) into the RepVGG model.")
    if not any(_AUTHORS_STEM.match(k) or _TRACKING_ONLY & set(k.split(".")) for k in keys):
        return "native", dict(state), []
    mapped, dropped = {}, []
    for key, value in state.items():
        if _TRACKING_ONLY & set(key.split(".")):
            dropped.append(key)
            continue
        if key.startswith("stage0."):
            key = "layer0." + key[len("stage0."):]
        if _AUTHORS_STEM.match(key):
            head, index, branch, rest = key.split(".", 3)
            key = f"{head}.{index}.{_AUTHORS_STEM_BRANCH[branch]}.{rest}"
        mapped[key] = value
    return "rmnet-authors", mapped, dropped


def mismatch(model: nn.Module, state: StateDict) -> list[str]:
    """What keeps `state` from loading into `model` (num_batches_tracked may be absent): one entry per
    kind of problem, empty when it fits."""
    expected = model.state_dict()
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    shapes = sorted(f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
                    for k, v in expected.items() if k in state and state[k].shape != v.shape)
    return [f"{label} ({len(items)}): {', '.join(items[:8])}{', ...' if len(items) > 8 else ''}"
            for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", shapes)) if items]


def load_into(model: nn.Module, state: StateDict, what: str) -> None:
    """Load `state` into `model` in place, or raise CheckpointError naming every mismatch; `what`
    describes the file and model for the message."""
    problems = mismatch(model, state)
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems) + ". Check the model name, stem and num_classes.")
    full = model.state_dict()
    model.load_state_dict({**{k: full[k] for k in full.keys() - state.keys()}, **state})
