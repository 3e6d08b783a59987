"""Safe file I/O for checkpoints and deploy artifacts, with torch alone.

Writes are atomic (temporary file + fsync + rename: a crash leaves the previous file intact);
reads use `torch.load(weights_only=True)`, so a pickle that needs more than tensors and plain
containers is never executed, and every failure is a `CheckpointError` that names the file and why.
"""
from __future__ import annotations

import os
import pickle
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint or artifact; the message names it and the problem."""


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A fresh temporary path in `path`'s folder (which is made if missing) for the caller to write;
    renamed over `path` when the block ends, removed when it fails: readers see the old file or the
    whole new one, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load_file(path: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True; every failure becomes a CheckpointError that says why."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    # torch.save writes a zip archive, or (legacy format) a pickle that starts with its protocol
    # opcode (protocols 2-5); anything else (a text file, an HTML error page) is named as such instead of being fed to
    # the unpickler, which reads "hello" as a memo lookup and fails with KeyError: 101.
    if head and not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03",
                                                                                           b"\x04", b"\x05")):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it starts with {head!r}, not a zip archive or a "
                              f"pickle; check that the file was downloaded or copied completely")
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
    except Exception as e:   # damaged bytes make torch's readers fail in many ways (KeyError, struct.error, ...)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint, truncated or corrupt? "
                              f"({_first_sentence(e)}); copy or re-save the file") from None


def _first_sentence(error: Exception) -> str:
    """The finding, without the advice torch appends to its load errors."""
    text = " ".join(str(error).split())
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation")[0]
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?", "", text)
    return text.strip().split(". ")[0].rstrip(".") or type(error).__name__
