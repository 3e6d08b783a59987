"""torchrun process groups: env:// rendezvous, NCCL on CUDA, gloo on CPU; one process without torchrun.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (also across nodes with its
--nnodes/--rdzv flags); a plain `python train.py` has none and runs as a single process.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda")


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str = "auto", timeout_min: float = 30) -> torch.device:
    """Join the process group if torchrun started us, and return this rank's device.

    `device`: "auto" (this local rank's GPU when CUDA is available, else CPU), "cpu" or "cuda".
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but CUDA is not available; use device=cpu or device=auto")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if launched_by_torchrun() and not is_initialized():
        timeout = datetime.timedelta(minutes=timeout_min)
        store, rank_, world = _attempt_store(timeout)
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank_, world_size=world,
                                timeout=timeout, device_id=dev if use_cuda else None)
    return dev


def _attempt_store(timeout: datetime.timedelta) -> tuple[dist.Store, int, int]:
    """The env:// store, with its keys scoped to this torchrun restart.

    torchrun (torch >= 2.4) hands every restart of the worker group the same agent-hosted TCPStore, and
    env:// adds no per-restart prefix. The keys the dead attempt wrote (gloo's listening addresses, NCCL's
    unique id) are still there, so a restarted rank could read the previous attempt's values and connect
    to a process that no longer exists: gloo then hangs or fails in connectFullMesh (seen in about half of
    the restarts on a 2-core machine). TORCHELASTIC_RESTART_COUNT is the same on every rank of an attempt
    when all nodes start together; a node that joins an elastic job late counts its restarts from 0, so
    such jobs should run torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a fresh store per attempt).
    """
    store, rank_, world = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"rmnet/attempt{attempt}/default_pg", store), rank_, world


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP over the process group. The gradients are views into DDP's all-reduce buckets, which saves
    a copy per step and the memory of a second set of gradients."""
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, gradient_as_bucket_view=True)


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (a picklable value such as the run directory)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, and returned); a no-op on one process."""
    if is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """[obj of rank 0, obj of rank 1, ...] on rank `dst`, None elsewhere; [obj] without a process group.
    Tensors inside `obj` travel as lists (dist.gather_object cannot unpickle tensor storages)."""
    if not is_initialized():
        return [obj]
    out = [None] * world_size() if rank() == dst else None
    dist.gather_object(_pack(obj), out, dst=dst)
    return [_unpack(o) for o in out] if out is not None else None


def _pack(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": obj.cpu().tolist(), "dtype": str(obj.dtype).replace("torch.", "")}
    if isinstance(obj, dict):
        return {k: _pack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pack(v) for v in obj)
    return obj


def _unpack(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return torch.tensor(obj["__tensor__"], dtype=getattr(torch, obj["dtype"]))
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unpack(v) for v in obj)
    return obj


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy `src`'s buffers (BatchNorm statistics) to every rank: after the last training forward each
    rank's running statistics have drifted apart, and evaluation and checkpoints must use one set."""
    if is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src)
