"""Training checkpoints: the model (`artifacts.model_entries`) plus the state that resumes a run.

  {"format": "rmnet-train", "version": 2, "model", "model_spec", "layers",   (artifacts.formats)
   "optimizer", "scheduler", "scaler", "ema": EMA weights or None, "ema_updates", "epoch", "step",
   "step_in_epoch", "best_top1", "world_size", "rng": [per-rank RNG states], "hooks": {hook name: its
   state_dict()} (absent in files from before hooks had state), "config": the run's resolved config}

Written atomically and read with `weights_only=True` (rm.io); `artifacts.load` reads the model of
any of them, `load_checkpoint` the whole state for a resume, onto the CPU as torchvision's reference
does: the RNG states must be CPU tensors, and `load_state_dict` moves the rest to the model's device.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from artifacts import TRAIN_FORMAT, TRAIN_VERSION, CheckpointError
from rm import atomic_path, atomic_save, load_file


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain containers."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`'s states; their tensors may sit on any device (the setters take CPU ones)."""
    import random

    import numpy as np

    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str, **entries: Any) -> None:
    """Atomically write a training checkpoint {"format", "version", **entries}."""
    atomic_save({"format": TRAIN_FORMAT, "version": TRAIN_VERSION, **entries}, path)


def link_checkpoint(src: str, dst: str) -> None:
    """Make `dst` the file `src` is, atomically and without writing it again: a hard link (a later
    save replaces `src` by a new file and leaves `dst` as it is), or a copy where links fail."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:   # a file system without hard links
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint of this project (any version); CheckpointError for anything else."""
    blob = load_file(path, map_location)
    if not isinstance(blob, dict) or blob.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not an RMNet training checkpoint (no format={TRAIN_FORMAT!r})")
    return blob
