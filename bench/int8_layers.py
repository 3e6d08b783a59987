"""Where INT8 loses accuracy in a trained model's BN-folded and plain (RM) form, layer by layer.

    .venv/bin/python -m bench.int8_layers outputs/quickstart/<run>/best.pt --keep-float 0 4

For each form the script exports the float32 model, quantizes it as the benchmark's
`onnxruntime_int8` runtime does (bench/quantize.py: min-max calibration on training images,
per-channel int8 weights, per-tensor uint8 activations) and reports, per weight layer in graph
order, the SQNR of the int8 weights and of the layer's output activation against the float model on
validation images (ONNX Runtime's QDQ debugging helpers). For the plain form it also counts the
output channels whose weight row holds an exact 1.0, RM's pass-through of a reserved channel: a
"Dirac" row is that entry alone (reserve and pass layers: exact in int8, its scale is 1/127), a
"mixed" row adds it to trained weights (the merge conv of an identity shortcut: one per-channel
scale for 1.0 and for weights ~100x smaller). Then, for each `--keep-float` k, the k layers with the
lowest weight SQNR stay in float32 and the validation top-1 and agreement with eager float32 are
measured (speed: `benchmark.py ... runtime=[onnxruntime_int8] int8.keep_float=k`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import numpy_helper

import artifacts
from bench.export import ort_session, to_onnx
from bench.fidelity import compare, predictions
from bench.forms import build_forms
from bench.quantize import layer_errors, quantize_int8
from engine.environment import environment
from engine.inputs import trained_loaders


def pass_through_rows(path: str) -> dict[str, tuple[int, int]]:
    """Per weight initializer of a conv: (Dirac rows, mixed rows) as described in the module docstring."""
    counts = {}
    for init in onnx.load(path).graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim != 4:
            continue
        rows = w.reshape(w.shape[0], -1)
        has_one = (rows == 1.0).any(axis=1)
        alone = np.count_nonzero(rows, axis=1) == 1
        counts[init.name] = (int((has_one & alone).sum()), int((has_one & ~alone).sum()))
    return counts


def _session_run(path: str):
    session = ort_session(path)
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def analyse(form: str, model: torch.nn.Module, calibration: list[torch.Tensor], val_loader, keep: list[int],
            work: str, batches: int) -> dict:
    val = [images for images, _ in val_loader]
    path = to_onnx(model, calibration[0][:2], os.path.join(work, f"{form}.onnx"))
    first = quantize_int8(path, os.path.join(work, f"{form}.int8.onnx"), calibration)
    layers = layer_errors(first["prepared"], os.path.join(work, f"{form}.int8.onnx"), val[:batches])
    rows = pass_through_rows(first["prepared"])
    graph = onnx.load(first["prepared"], load_external_data=False).graph
    weight_of = {node.name: node.input[1] for node in graph.node if len(node.input) > 1}
    for layer in layers:
        layer["dirac_rows"], layer["mixed_rows"] = rows.get(weight_of[layer["node"]], (0, 0))
    reference = predictions(model, val_loader)
    fixes = []
    for k in keep:
        out = os.path.join(work, f"{form}.int8.keep{k}.onnx")
        report = quantize_int8(path, out, calibration, keep_float=k)
        fixes.append({"keep_float": k, "kept": report["kept_float"],
                      **compare(reference, predictions(_session_run(out), val_loader)[0])})
    return {"form": form, "layers": layers, "fixes": fixes}


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# INT8 error per layer: {report['model']} ({env['date'][:10]})", "",
             f"- File: `{report['checkpoint']}`; {env['device_name']}; torch {env['torch']}, onnxruntime "
             f"{report['onnxruntime']}; commit {env['git_commit']}; load average {env['load_average_1min']:.1f}",
             f"- Calibration: {report['calibration_images']} training images; layer errors on "
             f"{report['layer_images']} validation images; fidelity on the whole validation split",
             f"- Command: `{env['command']}`", ""]
    for result in report["forms"]:
        lines += [f"## {result['form']}", "",
                  "| layer | node | op | weight SQNR dB | output SQNR dB | Dirac rows | mixed rows |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in result["layers"]:
            out = "" if r["output_sqnr_db"] is None else f"{r['output_sqnr_db']:.1f}"
            lines.append(f"| {r['layer']} | {r['node']} | {r['op']} | {r['weight_sqnr_db']:.1f} | {out} | "
                         f"{r['dirac_rows']} | {r['mixed_rows']} |")
        lines += ["", "| layers kept in float | which | top-1 % | eager fp32 top-1 % | agreement % |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {f['keep_float']} | {', '.join(f['kept']) or '-'} | {f['top1']:.2f} | {f['top1_reference']:.2f} "
                  f"| {f['agreement']:.2f} |" for f in result["fixes"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a training checkpoint with a stored data config (best.pt)")
    p.add_argument("--forms", nargs="+", default=["bn_folded", "plain"], help="forms to analyse")
    p.add_argument("--keep-float", nargs="+", type=int, default=[0, 4], help="layers kept in float32, each measured")
    p.add_argument("--calibration-batches", type=int, default=8, help="training batches (default 8, as the benchmark)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64, as the benchmark)")
    p.add_argument("--layer-batches", type=int, default=4, help="validation batches for the layer errors")
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1)")
    p.add_argument("--out", default=None, help="output path without extension (default: beside the checkpoint)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    art = artifacts.load(args.checkpoint)
    loaders = trained_loaders(art, args.batch, args.calibration_batches)
    if loaders is None:
        sys.exit(f"error: {args.checkpoint} stores no data config: use a checkpoint written by train.py")
    forms = build_forms(art.model, art.spec, args.forms)
    # Drawn once: the calibration sampler continues its random stream on a second pass, and every
    # form must be calibrated on the same images.
    calibration = [images for images, _ in loaders[0]]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rmnet-int8-") as work:
        results = [analyse(form, m, calibration, loaders[1], args.keep_float, work, args.layer_batches)
                   for form, m in forms.items()]
    report = {"model": art.spec.label, "checkpoint": args.checkpoint, "environment": environment("cpu"),
              "onnxruntime": onnxruntime.__version__,
              "calibration_images": sum(len(x) for x in calibration),
              "layer_images": min(args.layer_batches * args.batch, len(loaders[1].sampler)),
              "seconds": time.perf_counter() - started, "forms": results}
    out = args.out or os.path.splitext(args.checkpoint)[0] + ".int8_layers"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(to_markdown(report))
    print(to_markdown(report))
    print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
    main()
