"""Mixed precision settings: `amp` is "none", "bf16" or "fp16" (fp16 trains with a GradScaler)."""
from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str, device: torch.device) -> str:
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 (or amp=none) on CPU")
    return amp


def autocast(device: torch.device, amp: str = "none"):
    """torch.autocast for `amp`, or a no-op context for amp="none"."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Enabled only for fp16 (bf16 has float32's range and needs no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
