"""Checkpoint I/O: atomic writes, safe reads (`weights_only=True` only), state-dict extraction.

Training checkpoints are plain dicts:
  {"format": "rmnet-train", "version": 1, "model": state_dict, "model_cfg": {name, num_classes,
   stem, ...}, "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "best_top1", "rng",
   "config"}
"""
from __future__ import annotations

import os
import pickle
import re
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
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        if unsafe:
            raise CheckpointError(
                f"{path} needs the Python object {unsafe.group(1)} to load; files are read with "
                f"weights_only=True, so such pickles are never executed. Re-save it as a plain dict of "
                f"tensors (torch.save(model.state_dict(), path))") from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint, or a corrupt one "
                              f"({_first_sentence(e)}); copy or re-save the file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint, truncated or corrupt? "
                              f"({_first_sentence(e)}); copy or re-save the file") from None


def _first_sentence(error: Exception) -> str:
    """The finding, without the advice torch appends to its load errors."""
    text = " ".join(str(error).split())
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation")[0]
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?", "", text)
    return text.strip().split(". ")[0].rstrip(".") or type(error).__name__


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


# --- training checkpoints -------------------------------------------------------------------------
# Plain models (a deploy artifact being fine-tuned, or a model trained in converted form) are not
# rebuilt from the registry: their checkpoints also carry "spec", the layer list of rm.deploy, and
# model_cfg["plain"] = True.

def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain containers."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, **entries: Any) -> None:
    """Atomically write a training checkpoint {"format", "version", **entries} (keys as documented
    at the top of this module)."""
    atomic_save({"format": TRAIN_FORMAT, "version": 1, **entries}, path)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint of this project; CheckpointError for anything else."""
    blob = load_file(path, map_location)
    if not isinstance(blob, dict) or blob.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not an RMNet training checkpoint (no format={TRAIN_FORMAT!r}); "
                              f"use extract_state_dict for bare weights")
    return blob


def model_from_checkpoint(blob: dict[str, Any], path: str = "<checkpoint>", ema: bool = False) -> torch.nn.Module:
    """Rebuild the checkpoint's model (registry model or plain chain) in eval mode, with its trained
    weights or (`ema=True`) the EMA weights."""
    import models
    from rm.deploy import from_spec

    cfg = dict(blob.get("model_cfg") or {})
    if blob.get("spec") is not None:
        model = from_spec(blob["spec"])
    elif "name" in cfg:
        kwargs = models.registry.constructor_kwargs(cfg)
        try:
            model = models.create_model(cfg["name"], num_classes=cfg["num_classes"], stem=cfg["stem"], **kwargs)
        except (KeyError, TypeError, ValueError) as e:   # a model this code base does not have (any more)
            raise CheckpointError(f"{path} records model settings this code cannot build ({cfg}): "
                                  f"{e.args[0] if e.args else e}") from None
    else:
        raise CheckpointError(f"{path} says neither which model it holds (model_cfg.name) nor its layers (spec)")
    if ema and not isinstance(blob.get("ema"), dict):
        raise CheckpointError(f"{path} has no EMA weights (trained with ema_decay=0)")
    try:
        model.load_state_dict(extract_state_dict(blob["ema"] if ema else blob, path))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {cfg.get('name', 'the plain model')}: {e}") from None
    model.rmnet_cfg = cfg
    return model.eval()
