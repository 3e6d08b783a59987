"""The runtimes a model form is timed in: eager PyTorch, torch.compile, ONNX Runtime in float32 and
ONNX Runtime with INT8 static quantization (`bench/quantize.py`).

Each runtime turns an eval-mode model into a function of one input batch that returns the logits as
a tensor, so the benchmark times, checks and evaluates every runtime the same way. The ONNX
runtimes share one float32 export per form (dynamic batch), run on ONNX Runtime's CPU execution
provider with torch's thread count, and take a contiguous float32 NCHW batch.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .export import ort_session, to_onnx
from .packages import require
from .quantize import quantize_int8

Run = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RuntimeContext:
    """What preparing a runtime needs beyond the model, shared by the forms of one model."""
    work_dir: str                 # exported and quantized files (a temporary folder)
    example: torch.Tensor         # float32 CPU input at the model's size, for the export
    compile_mode: str = "default"
    calibration: list[torch.Tensor] = field(default_factory=list)   # INT8 calibration batches
    keep_float: int = 0           # INT8: layers left in float32 (bench/quantize.py)
    onnx: dict[str, str] = field(default_factory=dict)               # form -> float32 export
    int8: dict[str, dict[str, Any]] = field(default_factory=dict)    # form -> quantize_int8 report


@dataclass(frozen=True)
class Runtime:
    prepare: Callable[[nn.Module, str, RuntimeContext], Run]   # (model, form name, context) -> run
    torch: bool          # runs the PyTorch module itself: any device, precision and memory format
    exact: bool          # float arithmetic: within 1e-4 relative of eager float32 at precision fp32
    packages: tuple[str, ...] = ()


def _compile(model: nn.Module, form: str, ctx: RuntimeContext) -> Run:
    # Static shapes: the benchmark resets dynamo before each batch size, so every size is compiled
    # for itself rather than as one dynamic-shape graph (slower kernels) or past the recompile limit.
    return torch.compile(model, mode=ctx.compile_mode, dynamic=False)


def _exported(model: nn.Module, form: str, ctx: RuntimeContext) -> str:
    if form not in ctx.onnx:
        ctx.onnx[form] = to_onnx(model, ctx.example, os.path.join(ctx.work_dir, f"{form}.onnx"))
    return ctx.onnx[form]


def _session_run(path: str) -> Run:
    session = ort_session(path)
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _onnxruntime(model: nn.Module, form: str, ctx: RuntimeContext) -> Run:
    return _session_run(_exported(model, form, ctx))


def _onnxruntime_int8(model: nn.Module, form: str, ctx: RuntimeContext) -> Run:
    path = os.path.join(ctx.work_dir, f"{form}.int8.onnx")
    ctx.int8[form] = quantize_int8(_exported(model, form, ctx), path, ctx.calibration, ctx.keep_float)
    return _session_run(path)


ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
RUNTIMES: dict[str, Runtime] = {
    "eager": Runtime(lambda model, form, ctx: model, torch=True, exact=True),
    "compile": Runtime(_compile, torch=True, exact=True),
    "onnxruntime": Runtime(_onnxruntime, torch=False, exact=True, packages=ONNX_PACKAGES),
    "onnxruntime_int8": Runtime(_onnxruntime_int8, torch=False, exact=False, packages=ONNX_PACKAGES),
}


def check_runtimes(names: list[str], device: str, precisions: list[str]) -> None:
    """Known names whose packages import and which run on `device` in `precisions`; ValueError
    (one line) otherwise."""
    unknown = [n for n in names if n not in RUNTIMES]
    if not names or unknown:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)} or a list of them, got "
                         f"{', '.join(map(str, unknown)) or 'none'}")
    for name in names:
        for package in RUNTIMES[name].packages:
            require(package, f"runtime={name}")
    outside = [n for n in names if not RUNTIMES[n].torch]
    if outside and torch.device(device).type != "cpu":
        raise ValueError(f"runtime {', '.join(outside)} runs on ONNX Runtime's CPU execution provider only: "
                         f"use device=cpu, or the eager and compile runtimes on {device}")
    if outside and precisions != ["fp32"]:
        raise ValueError(f"runtime {', '.join(outside)} runs the float32 export (onnxruntime_int8 quantizes "
                         f"it itself): use precision=fp32, or the eager and compile runtimes for "
                         f"{', '.join(precisions)}")
