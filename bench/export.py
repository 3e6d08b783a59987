"""Export a plain model to TorchScript or ONNX and check the exported outputs against PyTorch.

Each exporter writes the file, loads it back with its own runtime and returns the largest
absolute and relative output difference on the example input. ONNX runs in onnxruntime when that
is installed and otherwise in onnx's reference evaluator (pure NumPy: exact but slow, so keep the
example batch small).
"""
from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.nn as nn

from rm import output_error


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


@torch.no_grad()
def export_onnx(model: nn.Module, example: torch.Tensor, path: str) -> dict[str, float | str]:
    """Export with the dynamo-based exporter (dynamic batch), validate the graph, run it, compare."""
    import onnx

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # ONNX is exported in float32 from CPU whatever precision the caller benchmarks in.
    example = example.float().cpu()
    model = copy.deepcopy(model).float().cpu().eval()
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=({0: batch},),
                      input_names=["input"], output_names=["logits"], verbose=False)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        out, runtime = session.run(None, {"input": example.numpy()})[0], "onnxruntime"
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        out, runtime = ReferenceEvaluator(graph).run(None, {"input": example.numpy()})[0], "onnx.reference"
    return {"path": path, "runtime": runtime, **output_error(model(example), out)}


EXPORTERS = {"torchscript": (export_torchscript, ".ts.pt"), "onnx": (export_onnx, ".onnx")}
