"""State dicts from elsewhere: recognise their key layout and map it onto this project's models.

The weights are taken out of a training checkpoint, a `{"state_dict": ...}` file or a bare state
dict (a DDP `module.` prefix is removed), the layout is recognised from the keys, and mapped:

* ``native``: this project's keys. They equal torchvision's ResNet/ResNeXt keys (and timm's plain
  ResNets') and the RepVGG authors' training-form keys (`stage0.rbr_dense.conv.weight`, `rbr_1x1`,
  `rbr_identity`, `stageN.i.*`, `linear.*`), so those load unchanged.
* ``rmnet-authors``: the RMNet authors' RMNeXt (models/rmnext.py) and resnet2vgg files. The stem
  `layer0` is an nn.Sequential of RepBlocks for 1000 classes (`layer0.<i>.conv33.weight`) and one
  RepBlock for any other class count (`layer0.conv33.weight`); its branches `conv33/bn33` and
  `conv11/bn11` are our `rbr_dense` and `rbr_1x1`. The BatchNorms `running` (stem, files before
  December 2021), `running1` and `running2` only track statistics for their pruning code, compute
  nothing, and are dropped.
* ``rmnet-authors-deep``: their `rmrep_<N>` / `repvgg_<N>` (models/rmrepvgg.py): blocks in forward
  order `feature.<i>.{conv33,bn33,conv11,bn11,bn00}` and `fc`. Block i maps onto the i-th block of
  our `rmrepvgg<N>` / `repvgg<N>` (stem, then four stages of 1 + (N - 5) / 4 blocks); `bn00` is
  `rbr_identity`. Their RM block keeps the first int(C x ratio) channels and computes the rest from
  all C, as `PartialRepVGGBlock` does; it applies the ReLU to the kept channels as well, which is
  the identity on them because every RM block follows a ReLU. The ratio is read from the weights
  (`rm_ratio`), so a file trained with another ratio than our default loads under the same name.
  Their CIFAR variant (a one-block stem and no first block in stage 1) has no registry counterpart
  and is refused with the reason.
* ``repvgg-deploy``: a RepVGG converted by its authors (`repvgg_model_convert`: one fused
  `rbr_reparam` conv per block). It is already plain: `plain_chain_state` puts its convs, in
  forward order, into the plain chain that `rm.convert` makes of the registry model.

Refused with the reason: torchvision MobileNetV2 and the RMNet authors' RMobileNet
(models/rmobilenet.py, a MobileNetV2 whose statistics-only BNs the RMNeXt check would otherwise
claim): widths, depth and ReLU6 differ from `mobilenetv2_rm`, whose shape is fixed by its conversion
to MobileNetV1. Any other mismatch is an error naming the missing, unexpected and wrongly shaped keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from rm import CheckpointError

StateDict = dict[str, torch.Tensor]

_BRANCH = {"conv33": "rbr_dense.conv", "bn33": "rbr_dense.bn", "conv11": "rbr_1x1.conv", "bn11": "rbr_1x1.bn",
           "bn00": "rbr_identity"}
_RMNEXT_STEM = re.compile(r"^layer0\.(?:(\d+)\.)?(conv33|bn33|conv11|bn11)\.(.+)$")
_TRACKING_ONLY = {"running", "running1", "running2"}
_RMREP = re.compile(r"^feature\.(\d+)\.(conv33|bn33|conv11|bn11|bn00)\.(.+)$")
_REPARAM = re.compile(r"^stage(\d+)(?:\.(\d+))?\.rbr_reparam\.(weight|bias)$")
_TV_MOBILENETV2 = ("features.1.conv.0.0.weight", "classifier.1.weight")
_RMOBILENET = ("features.0.0.weight", "features.1.0.weight", "classifier.1.weight")
_RMOBILENET_BLOCK = re.compile(r"^features\.(\d+)\.conv\.\d+\.weight$")
_NOT_MOBILENETV2_RM = ("mobilenetv2_rm has 13 blocks whose widths are fixed by its conversion to MobileNetV1 (a "
                       "1024-wide head) and uses ReLU so that the conversion is exact (a clamp at 6 would cut the "
                       "channels RM reserves): no tensor of that file has a counterpart. Train mobilenetv2_rm from "
                       "scratch instead (amc.py trains and prunes it).")


@dataclass
class Layout:
    name: str
    state: StateDict                 # our keys; for a plain layout, `<k>.weight` of the k-th layer with weights
    dropped: list[str] = field(default_factory=list)   # statistics-only tensors left out
    plain: bool = False              # weights of the registry model's plain chain, not of the model
    source: str = ""                 # what the file is, for messages
    kwargs: dict[str, Any] = field(default_factory=dict)   # constructor arguments the weights imply (RM ratio)


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


def map_layout(state: StateDict, origin: str) -> Layout:
    """Recognise the layout of `state` and give its tensors this project's keys."""
    keys = state.keys()
    if all(k in keys for k in _TV_MOBILENETV2):
        raise CheckpointError(
            f"{origin} is a torchvision MobileNetV2 (17 inverted residual blocks 16..320 wide, a 1280-wide "
            f"head, ReLU6). {_NOT_MOBILENETV2_RM}")
    if all(k in keys for k in _RMOBILENET) and any(_RMOBILENET_BLOCK.match(k) for k in keys):
        blocks = len({m[1] for m in map(_RMOBILENET_BLOCK.match, keys) if m})
        raise CheckpointError(
            f"{origin} is the RMNet authors' RMobileNet (their models/rmobilenet.py, e.g. mobilenetv2_imagenet: "
            f"MobileNetV2 with ReLU6, {blocks} inverted residual blocks, a {state['classifier.1.weight'].shape[1]}-"
            f"wide head, and BNs running1/running2 that only track statistics for their conversion). "
            f"{_NOT_MOBILENETV2_RM}")
    if any(_REPARAM.match(k) for k in keys):
        return _repvgg_deploy(state)
    if any(_RMREP.match(k) for k in keys):
        return _rmrep(state, origin)
    if any(_RMNEXT_STEM.match(k) or _TRACKING_ONLY & set(k.split(".")) for k in keys):
        return _rmnext(state)
    return Layout("native", dict(state))


def _rmnext(state: StateDict) -> Layout:
    mapped, dropped = {}, []
    for key, value in state.items():
        if _TRACKING_ONLY & set(key.split(".")):
            dropped.append(key)
            continue
        stem = _RMNEXT_STEM.match(key)
        if stem:
            index, branch, rest = stem.groups()
            key = f"layer0.{index or 0}.{_BRANCH[branch]}.{rest}"
        mapped[key] = value
    return Layout("rmnet-authors", mapped, dropped, source="the RMNet authors' RMNeXt")


def _rmrep(state: StateDict, origin: str) -> Layout:
    blocks = 1 + max(int(m[1]) for m in map(_RMREP.match, state) if m)
    # An RM block computes fewer channels than it reads; with ratio 0 (repvgg_<N>) none does.
    kind = "rmrep" if any(k.endswith(".conv33.weight") and v.shape[0] < v.shape[1]
                          for k, v in state.items() if k.startswith("feature.")) else "repvgg"
    if (blocks - 5) % 8:
        if (blocks - 4) % 8 == 0:
            raise CheckpointError(
                f"{origin} is the RMNet authors' {kind}_{blocks + 1} built for a class count other than 1000: a "
                f"one-block stem and no first block in stage 1, {blocks} layers. This project's "
                f"{kind.replace('rmrep', 'rmrepvgg')}{blocks + 1} has {blocks + 1} with either stem (its stage 1 "
                f"starts with a block of its own), so no registry model has this file's shape")
        raise CheckpointError(f"{origin} has {blocks} feature blocks; the RMNet authors' rmrep_<N>/repvgg_<N> have "
                              f"N = 5 + 8k")
    per_stage = (blocks - 1) // 4
    mapped = {}
    for key, value in state.items():
        block = _RMREP.match(key)
        if block:
            i, branch, rest = int(block[1]), block[2], block[3]
            where = "stage0" if i == 0 else f"stage{(i - 1) // per_stage + 1}.{(i - 1) % per_stage}"
            key = f"{where}.{_BRANCH[branch]}.{rest}"
        elif key.startswith("fc."):
            key = "linear." + key[len("fc."):]
        mapped[key] = value
    ours = ("rmrepvgg" if kind == "rmrep" else "repvgg") + str(blocks)
    return Layout("rmnet-authors-deep", mapped, source=f"the RMNet authors' {kind}_{blocks} (model={ours})",
                  kwargs={"rm_ratio": _rm_ratio(state)} if kind == "rmrep" else {})


def _rm_ratio(state: StateDict) -> float:
    """The ratio an rmrep file was built with: an RM block of C channels keeps int(C x ratio) and computes
    the rest (the rows of its conv33), so the largest kept fraction is a ratio that reproduces them all."""
    kept = [1 - v.shape[0] / v.shape[1] for k, v in state.items()
            if k.startswith("feature.") and k.endswith(".conv33.weight") and v.shape[0] < v.shape[1]]
    return round(max(kept), 6)


def _repvgg_deploy(state: StateDict) -> Layout:
    """The fused convs in forward order (stage0, stage1.0, stage1.1, ...), then the classifier."""
    order = sorted({(int(m[1]), int(m[2] or -1)) for m in map(_REPARAM.match, state) if m})
    ordered, used = {}, set()
    for k, (stage, index) in enumerate(order):
        prefix = f"stage{stage}" + (f".{index}" if index >= 0 else "")
        for leaf in ("weight", "bias"):
            key = f"{prefix}.rbr_reparam.{leaf}"
            if key in state:
                ordered[f"{k}.{leaf}"] = state[key]
                used.add(key)
    for leaf in ("weight", "bias"):
        if f"linear.{leaf}" in state:
            ordered[f"{len(order)}.{leaf}"] = state[f"linear.{leaf}"]
            used.add(f"linear.{leaf}")
    ordered.update({k: v for k, v in state.items() if k not in used})   # reported as unexpected
    return Layout("repvgg-deploy", ordered, plain=True, source="a RepVGG in its authors' deploy form")


def plain_chain_state(layers: list[dict[str, Any]], ordered: StateDict) -> StateDict:
    """A plain layout's tensors under the keys of the chain `layers` (rm's layer list): the k-th
    layer with weights of the file is the k-th Conv2d or Linear of the chain."""
    weighted = [i for i, layer in enumerate(layers) if layer["type"] in ("Conv2d", "Linear")]
    out = {}
    for key, value in ordered.items():
        k, _, leaf = key.partition(".")
        out[f"{weighted[int(k)]}.{leaf}" if k.isdigit() and int(k) < len(weighted) else key] = value
    return out


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


def check_fits(model: nn.Module, state: StateDict, what: str) -> None:
    """Raise CheckpointError naming every mismatch of `state` with `model`; `what` describes the file and
    model for the message."""
    problems = mismatch(model, state)
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems) + ". Check the model name, stem and num_classes.")


def load_into(model: nn.Module, state: StateDict, what: str) -> None:
    """Load `state` into `model` in place, or raise CheckpointError naming every mismatch."""
    check_fits(model, state, what)
    full = model.state_dict()
    model.load_state_dict({**{k: full[k] for k in full.keys() - state.keys()}, **state})
