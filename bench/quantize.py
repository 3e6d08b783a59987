"""INT8 post-training static quantization of an ONNX model with ONNX Runtime, and where it loses.

`quantize_int8` calibrates activation ranges on given batches (min-max) and writes a QDQ model:
weights int8 per output channel (symmetric), activations uint8 per tensor, the types ONNX Runtime
recommends for x86 CPUs with VNNI (no reduced range needed). The float model is pre-processed first
(shape inference, BatchNorm folded into its conv), so a residual model's convs are quantized in their
folded form like the BN-folded one's. `keep_float=k` leaves the k weight layers whose weights lose
most to int8 (lowest signal-to-quantisation-noise ratio) in float32: in an RM plain model these are
the merge convs of identity-shortcut blocks, whose rows hold the shortcut's 1.0 next to the branch's
much smaller weights, so one per-channel scale serves both.

`layer_errors` compares every weight layer of the quantized model with the float one (weight SQNR
and the SQNR of the layer's output activation against the float model's on the same input), using
ONNX Runtime's own QDQ debugging helpers.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .packages import require

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


def _reader(batches: Iterable[torch.Tensor]):
    """ONNX Runtime's calibration-data interface over tensors (for the exported input `input`)."""
    quantization = require("onnxruntime.quantization", "INT8 quantization")

    class Batches(quantization.CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {"input": x.float().cpu().numpy()}

    return Batches()


def _weight_layers(path: str) -> dict[str, str]:
    """Weight initializer name -> name of the Conv/Gemm/MatMul node that consumes it."""
    onnx = require("onnx")
    graph = onnx.load(path, load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return {node.input[1]: node.name for node in graph.node
            if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in weights}


def weight_sqnr(float_path: str, int8_path: str) -> dict[str, float]:
    """SQNR in dB of every layer weight in `int8_path` against `float_path`, keyed by node name."""
    debug = require("onnxruntime.quantization.qdq_loss_debug", "INT8 layer errors")
    layers = _weight_layers(float_path)
    errors = debug.compute_weight_error(debug.create_weight_matching(float_path, int8_path))
    return {layers[w]: db for w, db in errors.items() if w in layers}


def quantize_int8(float_path: str, out_path: str, batches: Iterable[torch.Tensor], keep_float: int = 0
                  ) -> dict[str, Any]:
    """Write the INT8 QDQ model of `float_path` to `out_path`, calibrated on `batches` (a list: with
    `keep_float` > 0 a second pass calibrates again without the layers kept in float). Returns the
    layers kept in float, the weight SQNR of every layer quantized in a first pass, and the path of
    the pre-processed float model the QDQ model's names refer to (for `layer_errors`)."""
    quantization = require("onnxruntime.quantization", "INT8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = os.path.splitext(out_path)[0] + ".prep.onnx"
    quant_pre_process(float_path, prepared)

    def run(exclude: list[str]) -> None:
        quantization.quantize_static(
            prepared, out_path, _reader(batches), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            reduce_range=False, activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, calibrate_method=quantization.CalibrationMethod.MinMax,
            nodes_to_exclude=exclude)

    run([])
    sqnr = weight_sqnr(prepared, out_path)
    kept = sorted(sqnr, key=sqnr.get)[:keep_float]
    if kept:
        run(kept)
    return {"kept_float": kept, "weight_sqnr_db": sqnr, "prepared": prepared}


def layer_errors(float_path: str, int8_path: str, batches: Iterable[torch.Tensor]) -> list[dict[str, Any]]:
    """Per weight layer, in graph order: its weight SQNR (None for a layer kept in float) and the SQNR
    of its output activation (after a following ReLU/PReLU, where the QDQ graph quantizes) against the
    float model, on `batches`."""
    onnx = require("onnx")
    debug = require("onnxruntime.quantization.qdq_loss_debug", "INT8 layer errors")
    folder = os.path.dirname(os.path.abspath(int8_path))
    activations = {}
    for name, path in (("float", float_path), ("int8", int8_path)):
        augmented = os.path.join(folder, f"debug_{name}.onnx")
        debug.modify_model_output_intermediate_tensors(path, augmented)
        activations[name] = debug.collect_activations(augmented, _reader(batches))
    matched = debug.create_activation_matching(activations["int8"], activations["float"])
    output_db = {name: e["xmodel_err"] for name, e in debug.compute_activation_error(matched).items()
                 if "xmodel_err" in e}
    weights = weight_sqnr(float_path, int8_path)   # layers kept in float have none
    layers = set(_weight_layers(float_path).values())
    graph = onnx.load(float_path, load_external_data=False).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rows = []
    for node in graph.node:
        if node.name not in layers:
            continue
        out = node.output[0]
        after = consumers.get(out, [])
        if out not in output_db and len(after) == 1 and after[0].op_type in ("Relu", "PRelu"):
            out = after[0].output[0]
        rows.append({"layer": len(rows), "node": node.name, "op": node.op_type,
                     "weight_sqnr_db": weights.get(node.name), "output": out, "output_sqnr_db": output_db.get(out)})
    return rows
