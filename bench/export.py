"""Export a plain model to TorchScript or ONNX and check the exported outputs against PyTorch.

Each exporter writes the file, loads it back with its own runtime and returns the largest
absolute and relative output difference on the example input. ONNX files run in ONNX Runtime
(`ort_session`), which the benchmark's `onnxruntime` runtimes use too.
"""
from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.nn as nn

from rm import output_error

from .packages import require


@torch.no_grad()
def export_torchscript(model: nn.Module, example: torch.Tensor, path: str) -> dict[str, float | str]:
    """Trace `model` (a plain chain has no control flow), save, reload and compare."""
    model = model.eval()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream but still the runtime many C++ deployments load.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        torch.jit.save(torch.jit.trace(model, example), path)
        loaded = torch.jit.load(path, map_location=example.device)
    return {"path": path, "runtime": "torch.jit", **output_error(model(example), loaded(example))}


class SplitPReLU(nn.Module):
    """PReLU as relu(x) - a * relu(-x): the same values, in operators ONNX Runtime keeps in its blocked
    (NCHWc) conv layout. Its PRelu operator is neither fused into the conv nor run in that layout, so
    each one costs two layout reorders: the RM form of MobileNetV2 (MobileNetV1 with 16 PReLUs, where
    reserved linear bottlenecks may be negative) ran 2,577 img/s with PRelu and 5,165 split
    (RM + AMC at 30% of the residual MACs, batch 8, 1 thread, interleaved)."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.register_buffer("slope", prelu.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.slope.view(1, -1, *([1] * (x.dim() - 2)))
        return torch.relu(x) - a * torch.relu(-x)


def split_prelus(model: nn.Module) -> nn.Module:
    """`model` (modified in place) with every nn.PReLU replaced by SplitPReLU."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.PReLU):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, SplitPReLU(module))
    return model


@torch.no_grad()
def to_onnx(model: nn.Module, example: torch.Tensor, path: str, dynamic_batch: bool = True,
            dynamic_size: bool = False) -> str:
    """Write `model` (float32, CPU) as a validated ONNX file with a dynamic batch dimension (static
    shapes with `dynamic_batch=False`: the latency table's one-layer graphs; dynamic height and width
    too with `dynamic_size=True`), input `input` and output `logits`, by the dynamo-based exporter,
    PReLUs split (SplitPReLU); returns `path`. A plain model exact only at some input sizes keeps its
    `InputSizeCheck` in the graph: ONNX Runtime fails on the other sizes instead of answering wrongly."""
    onnx = require("onnx")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model = split_prelus(copy.deepcopy(model).float().cpu().eval())
    dims = {0: torch.export.Dim("batch", min=1)} if dynamic_batch else {}
    if dynamic_size:
        dims.update({2: torch.export.Dim("height", min=1), 3: torch.export.Dim("width", min=1)})
    dynamic = (dims,) if dims else None
    torch.onnx.export(model, (example.float().cpu(),), path, dynamo=True, dynamic_shapes=dynamic,
                      input_names=["input"], output_names=["logits"], verbose=False)
    onnx.checker.check_model(path)
    return path


def ort_session(path: str, threads: int | None = None):
    """An ONNX Runtime CPU session of `path` with all graph optimisations, running `threads` intra-op
    threads (default: torch's count, so both runtimes get the same cores)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1   # a chain of convs has no parallel branches to run
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def export_onnx(model: nn.Module, example: torch.Tensor, path: str) -> dict[str, float | str]:
    """Export (dynamic batch), validate the graph, run it in ONNX Runtime, compare with PyTorch."""
    example = example.float().cpu()   # ONNX is exported in float32 from CPU whatever the benchmark precision
    to_onnx(model, example, path)
    out = ort_session(path).run(None, {"input": example.numpy()})[0]
    reference = copy.deepcopy(model).float().cpu().eval()(example)
    return {"path": path, "runtime": "onnxruntime", **output_error(reference, out)}


EXPORTERS = {"torchscript": (export_torchscript, ".ts.pt"), "onnx": (export_onnx, ".onnx")}
