"""Checkpoint I/O: atomic writes, safe reads (`weights_only=True` only), state-dict extraction.

Training checkpoints are plain dicts:
  {"format": "rmnet-train", "version": 1, "model": state_dict, "model_cfg": {name, num_classes,
   stem, ...}, "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "best_top1", "rng",
   "config"}
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Any

import torch

TRAIN_FORMAT = "rmnet-train"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`: a crash
    mid-write leaves the previous file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_file(path: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True; every failure becomes a CheckpointError that says why."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} needs more than tensors and plain containers to load, and unsafe pickles are "
            f"never executed (weights_only=True). Re-save it as a plain dict of tensors. ({e})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None


def extract_state_dict(blob: Any, path: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The model weights inside a training checkpoint, a {"state_dict": ...} file or a bare state
    dict; a DDP `module.` prefix is removed."""
    if isinstance(blob, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not blob or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items()):
        raise CheckpointError(f"{path} holds no model state dict (expected tensors by parameter name)")
    if all(k.startswith("module.") for k in blob):
        blob = {k[len("module."):]: v for k, v in blob.items()}
    return blob
