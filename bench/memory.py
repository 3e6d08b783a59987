"""Peak activation memory of one inference forward pass.

Two methods, and every number says which one produced it:

* `tensor_lifetime_peak` (any device): a TorchDispatchMode sees every tensor an operator returns
  and keeps a weak reference to its storage; the live total is the sum of storages that are still
  referenced, sampled after every operator (when an operator's inputs and its output coexist, which
  is where the peak of a residual block sits: the block input is held for the shortcut while the
  branch runs). Parameters, buffers and the input are excluded, and so are kernel-internal
  workspaces (im2col buffers, cuDNN workspace) that never become tensors.
* `cuda_allocator_peak` (CUDA): `torch.cuda.max_memory_allocated` during the forward minus what
  was allocated before it (weights and input), so it includes cuDNN/cuBLAS workspaces.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

LIFETIME_METHOD = "tensor lifetimes (TorchDispatchMode; excludes weights, input and kernel workspaces)"
CUDA_METHOD = "CUDA allocator peak (max_memory_allocated minus weights and input; includes workspaces)"


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of storages created inside the mode that are still alive."""

    def __init__(self, external: list[torch.Tensor]):
        super().__init__()
        self.external = {t.untyped_storage().data_ptr() for t in external}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _release_dead(self) -> None:
        for ptr in [p for p, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(ptr)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # Free storages first: a freed address can be handed out again and must not look like an alias.
        self._release_dead()
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            # Views and in-place results share a tracked (or external) storage: not a new allocation.
            if size and ptr not in self.external and ptr not in self.live:
                self.live[ptr] = (StorageWeakRef(storage), size)
                self.current += size
        self.peak = max(self.peak, self.current)
        return out


@torch.inference_mode()
def tensor_lifetime_peak(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of live intermediate tensors during `model(x)` (see the module docstring)."""
    external = [x, *model.parameters(), *model.buffers()]
    with _LiveTensorBytes(external) as tracker:
        model(x)
    return tracker.peak


@torch.inference_mode()
def cuda_allocator_peak(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes the CUDA caching allocator handed out during `model(x)` beyond what was already
    allocated (weights, input)."""
    if x.device.type != "cuda":
        raise ValueError(f"cuda_allocator_peak needs a CUDA input, got one on {x.device}")
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    before = torch.cuda.memory_allocated(x.device)
    model(x)
    torch.cuda.synchronize(x.device)
    return torch.cuda.max_memory_allocated(x.device) - before


def peak_activation_memory(model: nn.Module, x: torch.Tensor, eager_model: nn.Module | None = None
                           ) -> dict[str, float | str | None]:
    """Both measurements in MiB; the allocator one is None off CUDA. `eager_model` is the
    uncompiled module for the lifetime count (a dispatch mode cannot see inside compiled graphs)."""
    mib = 2.0 ** 20
    report: dict[str, float | str | None] = {
        "lifetime_peak_mib": tensor_lifetime_peak(eager_model or model, x) / mib,
        "lifetime_method": LIFETIME_METHOD, "cuda_peak_mib": None, "cuda_method": None}
    if x.device.type == "cuda":
        report["cuda_peak_mib"] = cuda_allocator_peak(model, x) / mib
        report["cuda_method"] = CUDA_METHOD
    return report
