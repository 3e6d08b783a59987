"""Inference speed, size and memory of each model's residual, BN-folded and plain (RM) form, in each
runtime (eager, torch.compile, ONNX Runtime, ONNX Runtime INT8) and precision.

The paper's protocol (§4: "tested on a Tesla V100 GPU with a batch size of 128 by first feeding 50
batches to warm the hardware up, then 50 batches with time usage recorded") is the default on GPU:
eval mode, `torch.inference_mode`, random input at the model's resolution, `cudnn.benchmark` on,
timing between CUDA events. Every (form, runtime) of a model is warmed up, then the timed blocks
run `repeats` times, interleaved: repeat 1 of every form and runtime, then repeat 2, ..., so load
changes on a shared machine hit all of them alike and their ratios are measured in one run. img/s
is the median over repeats with min/max as the spread. On CPU the protocol would take hours, so
smaller defaults apply (CPU_DEFAULTS) unless set explicitly, and the report says so.

Forms: `residual` (as trained), `bn_folded` (every conv+BN pair folded by torch.fx, the fair
baseline for a deployed residual net), `plain` (`rm.convert`). Parameters and MACs are counted, and
every form in every runtime and precision is checked against the residual model in eager float32
(IEEE) on one seeded batch: float32 runtimes must stay within CHECK_TOLERANCE, lossy ones (INT8,
bf16, fp16) are reported. Files with a stored data config are calibrated on their training images
and, with `fidelity=true`, lossy rows get their validation top-1 and its agreement with eager
float32. Models are registry names (random weights, the stem's nominal input size; INT8 calibrates
on random input) or files (`checkpoints=[...]`, read by `artifacts.load`: a deploy artifact has its
plain form only, and every file is timed at the input size it was trained at).
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.fx.experimental.optimization import fuse
from tqdm import tqdm

import artifacts
import models
import rm
from engine.environment import environment
from engine.evaluate import backend_flags
from engine.faults import probe_run_dir
from engine.inputs import trained_loaders
from models import ModelSpec
from models.complexity import count_macs, count_params

from .export import EXPORTERS
from .fidelity import compare, predictions
from .memory import peak_activation_memory
from .runtimes import RUNTIMES, Context, check_runtimes

SCHEMA = "rmnet-benchmark/2"
FORMS = ("residual", "bn_folded", "plain")
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROTOCOL = {"batch_size": [128], "warmup": 50, "iters": 50}
CPU_DEFAULTS = {"batch_size": [8], "warmup": 2, "iters": 5}
CHECK_TOLERANCE = 1e-4   # relative output error of a float32 runtime against eager float32
PRESET_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "presets"


@dataclass
class Settings:
    device: str
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    channels_last: bool = False
    runtimes: list[str] = field(default_factory=lambda: ["eager"])
    compile_mode: str = "default"  # the torch.compile mode of runtime `compile`
    batch_sizes: list[int] = field(default_factory=lambda: list(PROTOCOL["batch_size"]))
    warmup: int = PROTOCOL["warmup"]
    iters: int = PROTOCOL["iters"]
    repeats: int = 3
    forms: list[str] = field(default_factory=lambda: list(FORMS))
    memory: bool = True
    check: bool = True
    calibration_batches: int = 8
    keep_float: int = 0
    fidelity: bool = False
    data_batch_size: int = 64
    export: list[str] = field(default_factory=list)
    export_dir: str = "benchmarks/exports"
    notes: list[str] = field(default_factory=list)


def _plain_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def resolve_settings(cfg: DictConfig) -> Settings:
    """Validate the config and fill protocol defaults (paper protocol on GPU, CPU_DEFAULTS on CPU)."""
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} but CUDA is not available here; use device=cpu (or auto)")
    precisions = [str(p) for p in _plain_list(cfg.precision)]
    if not precisions or set(precisions) - set(PRECISIONS):
        raise ValueError(f"precision must be one of {list(PRECISIONS)} or a list of them, got {cfg.precision!r}")
    forms = _plain_list(cfg.forms)
    if not forms or set(forms) - set(FORMS):
        raise ValueError(f"forms must be a non-empty subset of {list(FORMS)}, got {forms}")
    runtimes = [str(r) for r in _plain_list(cfg.runtime)]
    check_runtimes(runtimes, device, precisions)
    from torch._inductor import list_mode_options

    if cfg.compile_mode not in list_mode_options():
        raise ValueError(f"compile_mode must be one of {list(list_mode_options())}, got {cfg.compile_mode!r}")
    export = _plain_list(cfg.export)
    if set(export) - set(EXPORTERS):
        raise ValueError(f"export must be a subset of {list(EXPORTERS)}, got {export}")
    if export and "plain" not in forms:
        raise ValueError("export writes the plain model: add `plain` to forms")
    if cfg.int8.calibration_batches < 1 or cfg.int8.keep_float < 0 or cfg.data_batch_size < 1:
        raise ValueError("int8.calibration_batches and data_batch_size must be >= 1 and int8.keep_float >= 0")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    on_cpu = torch.device(device).type == "cpu"
    defaults = CPU_DEFAULTS if on_cpu else PROTOCOL
    notes = []
    chosen = {}
    for key in ("batch_size", "warmup", "iters"):
        value = cfg.get(key)
        chosen[key] = defaults[key] if value is None else value
    if on_cpu and any(cfg.get(k) is None for k in CPU_DEFAULTS):
        notes.append(
            "CPU run: reduced defaults (batch {batch_size}, {warmup} warm-up, {iters} timed iterations) instead of "
            "the paper's GPU protocol (batch 128, 50 + 50); set batch_size=, warmup=, iters= to change."
            .format(**{k: ", ".join(map(str, _plain_list(chosen[k]))) for k in CPU_DEFAULTS}))
    batch_sizes = [int(b) for b in _plain_list(chosen["batch_size"])]
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_size must be a positive integer or a list of them, got {batch_sizes}")
    if chosen["iters"] < 1 or cfg.repeats < 1 or chosen["warmup"] < 0:
        raise ValueError("iters and repeats must be >= 1 and warmup >= 0")
    if "compile" in runtimes and chosen["warmup"] < 1:
        raise ValueError("torch.compile compiles on the first call: use warmup >= 1 so it is not timed")
    if on_cpu and "fp16" in precisions:
        notes.append("fp16 on CPU runs slow fallback kernels; the figures say little about deployment.")
    return Settings(device=device, precisions=precisions, channels_last=bool(cfg.channels_last),
                    runtimes=runtimes, compile_mode=cfg.compile_mode, batch_sizes=batch_sizes,
                    warmup=int(chosen["warmup"]), iters=int(chosen["iters"]), repeats=int(cfg.repeats), forms=forms,
                    memory=bool(cfg.memory), check=bool(cfg.check),
                    calibration_batches=int(cfg.int8.calibration_batches), keep_float=int(cfg.int8.keep_float),
                    fidelity=bool(cfg.fidelity), data_batch_size=int(cfg.data_batch_size), export=export,
                    export_dir=cfg.export_dir, notes=notes)


def load_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ValueError(f"unknown preset {name!r}; presets in {PRESET_DIR}: {', '.join(known)}")
    preset = OmegaConf.to_container(OmegaConf.load(path))
    unknown = set(preset) - {"models", "stem", "num_classes", "batch_size"}
    if unknown:
        raise ValueError(f"{path} sets {sorted(unknown)}; a preset may set models, stem, num_classes, batch_size")
    return preset


def resolve_models(cfg: DictConfig) -> tuple[list[ModelSpec | str], DictConfig]:
    """What to benchmark: a ModelSpec per registry name (stem, num_classes, model_kwargs applied) and
    a path per file of `checkpoints`, and the config with the preset merged in (a preset fills only
    what the command line left unset)."""
    names = _plain_list(cfg.models)
    if cfg.preset:
        if names:
            raise ValueError("give either models=[...] or preset=..., not both")
        preset = load_preset(cfg.preset)
        cfg = OmegaConf.merge(cfg, {k: v for k, v in preset.items() if cfg.get(k) is None or k == "models"})
        names = _plain_list(cfg.models)
    files = [str(p) for p in _plain_list(cfg.checkpoints)]
    if not names and not files:
        raise ValueError("nothing to benchmark: pass models=[resnet50,rmnet50x6_32], preset=table1_imagenet or "
                         "checkpoints=[path/to/deploy.pt]")
    kwargs = OmegaConf.to_container(cfg.model_kwargs) if cfg.model_kwargs else {}
    sources: list[ModelSpec | str] = []
    for name in names:
        stem = cfg.stem or models.model_stems(name)[0]  # raises UnknownModelError with suggestions
        sources.append(ModelSpec(name, int(cfg.num_classes or (10 if stem == "cifar" else 1000)), stem, kwargs))
    return sources + files, cfg


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` with every Conv2d -> BatchNorm2d pair folded into the conv (torch.fx;
    eval-mode statistics). BatchNorms that follow no conv (RepVGG identity branches) stay."""
    return fuse(model.eval(), inplace=False).eval()


def build_forms(model: nn.Module, spec: ModelSpec, forms: list[str]) -> dict[str, nn.Module]:
    """The requested forms of `model`; a plain model has only its plain form."""
    if spec.form == "plain":
        return {"plain": model.eval()} if "plain" in forms else {}
    builders = {"residual": lambda m: m, "bn_folded": fold_bn, "plain": rm.convert}
    return {form: builders[form](model.eval()) for form in forms}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_interleaved(calls: dict[Any, Callable[[], Any]], device: torch.device, warmup: int, iters: int,
                     repeats: int) -> dict[Any, list[float]]:
    """Seconds for `iters` calls of each function, once per repeat, after `warmup` untimed calls of
    each. Repeats are interleaved (all functions' first timed block, then all second ones, ...)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    _sync(device)
    seconds: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    call()
                end.record()
                end.synchronize()
                seconds[key].append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                for _ in range(iters):
                    call()
                seconds[key].append(time.perf_counter() - t0)
    return seconds


def time_forward(model: nn.Module, x: torch.Tensor, warmup: int, iters: int, repeats: int) -> list[float]:
    """Seconds for `iters` forward passes, once per repeat, after `warmup` untimed passes."""
    return time_interleaved({0: lambda: model(x)}, x.device, warmup, iters, repeats)[0]


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def _cast(x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _calibration(s: Settings, size: int, data: tuple | None) -> list[torch.Tensor]:
    """INT8 calibration batches: the file's training images, or seeded N(0, 1) input (the scale of
    normalised images) for a registry model with random weights."""
    if data is not None:
        return [images for images, _ in data[0]]
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s.data_batch_size, 3, size, size, generator=gen) for _ in range(s.calibration_batches)]


def _lossy(runtime: str, precision: str) -> bool:
    """Arithmetic other than IEEE float32: INT8, or a reduced precision (tf32, bf16, fp16)."""
    return not RUNTIMES[runtime].exact or precision != "fp32"


def benchmark_model(model: nn.Module, spec: ModelSpec, s: Settings, data: tuple | None = None
                    ) -> list[dict[str, Any]]:
    """One row per (precision, batch size, runtime, form), at the spec's input size. `data`: the
    (calibration, validation) loaders of a trained file (`engine.inputs.trained_loaders`), else None."""
    size = spec.input_size
    name = spec.name or "plain"
    device = torch.device(s.device)
    model = model.to(device).eval()
    forms = build_forms(model, spec, s.forms)
    if not forms:
        raise ValueError(f"{spec.label} is a plain model: benchmark it with forms=[plain]")
    static = {form: {"params": count_params(m), "macs": count_macs(m, size)} for form, m in forms.items()}
    # The reference of every output check and fidelity figure: the residual model (a deploy file's plain
    # model when it has no other) in eager float32 with IEEE convolutions.
    reference_form = "residual" if spec.form == "residual" else "plain"
    x_check = torch.randn(s.batch_sizes[0], 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with backend_flags("fp32"), torch.inference_mode():
        reference_out = model(x_check)
        ref_predictions = ({form: predictions(m, data[1], lambda x: x.to(device)) for form, m in forms.items()}
                           if data is not None and s.fidelity else {})
    exports = {}
    for kind in s.export:
        exporter, suffix = EXPORTERS[kind]
        path = os.path.join(s.export_dir, f"{name}_{spec.stem}_plain{suffix}")
        exports[kind] = exporter(forms["plain"], torch.randn(2, 3, size, size, device=device), path)

    rows = []
    with tempfile.TemporaryDirectory(prefix="rmnet-bench-") as work:
        ctx = Context(work, example=torch.randn(2, 3, size, size), compile_mode=s.compile_mode,
                      calibration=_calibration(s, size, data) if "onnxruntime_int8" in s.runtimes else [],
                      keep_float=s.keep_float)
        for precision in s.precisions:
            dtype = PRECISIONS[precision]
            # Prepared outside backend_flags: torch.export cannot read cuDNN's TF32 flag once it is set to
            # "ieee" by the new API ("mix of the legacy and new APIs"); compiling inside is fine.
            runs, modules = {}, {}
            for form, m in forms.items():
                # A copy in another dtype, so later precisions still start from the float32 weights.
                module = m if dtype == torch.float32 else copy.deepcopy(m).to(dtype)
                modules[form] = module.to(memory_format=torch.channels_last) if s.channels_last else module
                for runtime in s.runtimes:
                    rt = RUNTIMES[runtime]
                    runs[runtime, form] = rt.prepare(modules[form] if rt.torch else m, form, ctx)
            with backend_flags(precision):
                checks: dict[tuple, dict | None] = {}   # measured at the first batch size, for every row
                for batch in s.batch_sizes:
                    rows += _time_batch(runs, modules, batch, precision, name, spec, s, static, checks,
                                        x_check, reference_out, reference_form)
                if ref_predictions:
                    _add_fidelity(rows, runs, data[1], ref_predictions, precision, s)
                del runs, modules
        for r in rows:
            if r["runtime"] == "onnxruntime_int8":
                report = ctx.int8[r["form"]]
                r["int8"] = {"kept_float": report["kept_float"],
                             "min_weight_sqnr_db": min(report["weight_sqnr_db"].values())}
            if r["form"] == "plain" and exports:
                r["export"] = exports
    return rows


def _time_batch(runs: dict, modules: dict, batch: int, precision: str, name: str, spec: ModelSpec, s: Settings,
                static: dict, checks: dict, x_check: torch.Tensor, reference_out: torch.Tensor,
                reference_form: str) -> list[dict[str, Any]]:
    """Time every (runtime, form) on one batch size, interleaved; check the outputs of those not in
    `checks` yet (at the first batch size: x_check's, so a compiled model needs no other shape)."""
    device, dtype = torch.device(s.device), PRECISIONS[precision]
    if "compile" in s.runtimes:
        torch.compiler.reset()   # compile this batch size afresh (see runtimes._compile)
    x = torch.randn(batch, 3, spec.input_size, spec.input_size, device=device)
    inputs = {True: _cast(x, dtype, s.channels_last), False: x}   # torch runtimes / ONNX Runtime (float32 NCHW)
    calls = {key: (lambda run=run, x=inputs[RUNTIMES[key[0]].torch]: run(x)) for key, run in runs.items()}
    seconds = time_interleaved(calls, device, s.warmup, s.iters, s.repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for (runtime, form), run in runs.items():
        torch_runtime = RUNTIMES[runtime].torch
        if (runtime, form) not in checks:
            checks[runtime, form] = None
            if s.check and (runtime, form, precision) != ("eager", reference_form, "fp32"):
                with torch.inference_mode():
                    out = run(_cast(x_check, dtype, s.channels_last) if torch_runtime else x_check)
                exact = not _lossy(runtime, precision)
                checks[runtime, form] = {**rm.output_error(reference_out, out.float()),
                                         "reference": f"{reference_form} eager fp32",
                                         "tolerance": CHECK_TOLERANCE if exact else None}
                if exact and checks[runtime, form]["max_rel"] > CHECK_TOLERANCE:
                    print(f"warning: {name} {form} in {runtime} differs from the {reference_form} model by "
                          f"{checks[runtime, form]['max_rel']:.1e} relative (tolerance {CHECK_TOLERANCE:.0e})",
                          file=sys.stderr)
        memory = None
        if s.memory and torch_runtime:
            memory = peak_activation_memory(run, inputs[True], eager_model=modules[form])
        rows.append({
            "model": name, "stem": spec.stem, "num_classes": spec.num_classes, "input_size": spec.input_size,
            "form": form, "runtime": runtime, "precision": precision, "batch_size": batch, **static[form],
            "img_per_s": _summary([batch * s.iters / t for t in seconds[runtime, form]]),
            "latency_ms": _summary([1000 * t / s.iters for t in seconds[runtime, form]]),
            "load_average_1min": load, "memory": memory, "check": checks[runtime, form], "fidelity": None, "int8": None,
            "export": None,
        })
    return rows


def _add_fidelity(rows: list[dict], runs: dict, loader: Any, ref_predictions: dict, precision: str,
                  s: Settings) -> None:
    """Validation top-1 and agreement with eager float32 for the lossy (runtime, form)s of `precision`."""
    device, dtype = torch.device(s.device), PRECISIONS[precision]
    for (runtime, form), run in runs.items():
        if not _lossy(runtime, precision):
            continue   # float32 runtimes: the output check already bounds their difference
        prepare = ((lambda x: _cast(x.to(device), dtype, s.channels_last)) if RUNTIMES[runtime].torch
                   else (lambda x: x))
        if runtime == "compile":
            torch.compiler.reset()
        result = compare(ref_predictions[form], predictions(run, loader, prepare)[0])
        for r in rows:
            if (r["runtime"], r["form"], r["precision"]) == (runtime, form, precision):
                r["fidelity"] = result


def _fmt_mib(memory: dict | None, key: str) -> str:
    return "" if not memory or memory.get(key) is None else f"{memory[key]:.1f}"


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else ""


def _best_lines(rows: list[dict]) -> list[str]:
    """Best plain against best residual-side (residual or bn_folded) form, per model, precision, batch
    and arithmetic (float runtimes; INT8)."""
    best: dict[tuple, dict[str, tuple[float, str]]] = {}
    for r in rows:
        kind = "float" if RUNTIMES[r["runtime"]].exact else "int8"
        side = "plain" if r["form"] == "plain" else "residual"
        key = (r["model"], r["precision"], r["batch_size"], kind)
        speed = r["img_per_s"]["median"]
        if speed > best.setdefault(key, {}).get(side, (0.0, ""))[0]:
            best[key][side] = (speed, f"{r['form']}, {r['runtime']}")
    lines = ["| model | precision | batch | arithmetic | best residual-side form | img/s | best plain | img/s "
             "| plain / residual |", "|" + " --- |" * 9]
    for (model, precision, batch, kind), sides in best.items():
        if len(sides) < 2:
            continue
        (res, res_where), (plain, plain_where) = sides["residual"], sides["plain"]
        lines.append(f"| {model} | {precision} | {batch} | {kind} | {res_where} | {res:.1f} | {plain_where} | "
                     f"{plain:.1f} | {plain / res:.2f}x |")
    return lines if len(lines) > 2 else []


def to_markdown(report: dict[str, Any]) -> str:
    env, s = report["environment"], report["settings"]
    results = report["results"]
    cuda_mem = any(r["memory"] and r["memory"]["cuda_peak_mib"] is not None for r in results)
    versions = f"torch {env['torch']}" + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env["cuda"] else "")
    versions += "".join(f", {k} {env[k]}" for k in ("onnxruntime",) if env.get(k))
    runtimes = ", ".join(f"{r} ({s['compile_mode']})" if r == "compile" else r for r in s["runtimes"])
    lines = [
        f"# Inference benchmark ({env['date'][:10]})", "",
        f"- Device: {env['device_name']}; {versions}; commit {env['git_commit']}"
        + (f"; load average {load:.1f} at the start" if (load := env.get("load_average_1min")) is not None else ""),
        f"- Precision {', '.join(s['precisions'])}, channels_last {s['channels_last']}; runtimes {runtimes}; "
        f"{s['warmup']} warm-up + {s['iters']} timed iterations, {s['repeats']} repeats interleaved over forms and "
        "runtimes (median, min-max)",
        f"- Command: `{env['command']}`",
        *[f"- Note: {n}" for n in s["notes"]], "",
        "| model | batch | precision | runtime | form | params (M) | GMACs | img/s | min-max | ms/batch "
        "| vs residual | vs eager | act. mem MiB (lifetimes) |" + (" CUDA peak MiB |" if cuda_mem else "")
        + " load | max rel err vs fp32 |",
        "|" + " --- |" * (15 + cuda_mem),
    ]
    speed = {(r["model"], r["precision"], r["batch_size"], r["runtime"], r["form"]): r["img_per_s"]["median"]
             for r in results}
    order = {name: i for i, name in enumerate(dict.fromkeys(r["model"] for r in results))}
    rows = sorted(results, key=lambda r: (order[r["model"]], s["precisions"].index(r["precision"]),
                                          r["batch_size"], s["runtimes"].index(r["runtime"]),
                                          FORMS.index(r["form"])))
    for r in rows:
        img_s = r["img_per_s"]
        at = (r["model"], r["precision"], r["batch_size"])
        cells = [r["model"], r["batch_size"], r["precision"], r["runtime"], r["form"], f"{r['params'] / 1e6:.2f}",
                 f"{r['macs'] / 1e9:.3f}", f"{img_s['median']:.1f}", f"{img_s['min']:.1f}-{img_s['max']:.1f}",
                 f"{r['latency_ms']['median']:.2f}", _ratio(img_s["median"], speed.get((*at, r["runtime"], "residual"))),
                 _ratio(img_s["median"], speed.get((*at, "eager", r["form"]))),
                 _fmt_mib(r["memory"], "lifetime_peak_mib")]
        if cuda_mem:
            cells.append(_fmt_mib(r["memory"], "cuda_peak_mib"))
        cells.append("" if r["load_average_1min"] is None else f"{r['load_average_1min']:.1f}")
        cells.append(f"{r['check']['max_rel']:.1e}" if r["check"] else "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    best = _best_lines(rows)
    if best:
        lines += ["", "Fastest plain against fastest residual or BN-folded form, per arithmetic (float runtimes; "
                  "INT8), from the table above:", "", *best]
    fidelity = {(r["model"], r["form"], r["runtime"], r["precision"]): r["fidelity"] for r in rows if r["fidelity"]}
    if fidelity:
        lines += ["", "Validation top-1 of the lossy rows against the same form in eager fp32:", "",
                  "| model | form | runtime | precision | top-1 % | eager fp32 top-1 % | delta | agreement % | images |",
                  "|" + " --- |" * 9]
        lines += [f"| {m} | {f} | {rt} | {p} | {v['top1']:.2f} | {v['top1_reference']:.2f} | {v['delta']:+.2f} | "
                  f"{v['agreement']:.2f} | {v['images']} |" for (m, f, rt, p), v in fidelity.items()]
    int8 = {(r["model"], r["form"]): r["int8"] for r in rows if r["int8"]}
    if int8:
        lines.append("")
        lines += [f"INT8 {model} {form}: lowest weight SQNR {v['min_weight_sqnr_db']:.1f} dB; layers kept in float: "
                  f"{', '.join(v['kept_float']) or 'none'}" for (model, form), v in int8.items()]
    exports = {(r["model"], kind): e for r in rows if r["export"] for kind, e in r["export"].items()}
    if exports:
        lines.append("")
        lines += [f"Export {kind} of {model} plain: `{e['path']}`, output vs PyTorch max rel error "
                  f"{e['max_rel']:.1e} ({e['runtime']})" for (model, kind), e in exports.items()]
    memory = next((r["memory"] for r in results if r["memory"]), None)
    if memory:
        lines += ["", f"Activation memory (lifetimes): {memory['lifetime_method']}."]
        if memory["cuda_method"]:
            lines.append(f"CUDA peak: {memory['cuda_method']}.")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str, name: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(to_markdown(report))
    return base + ".md", base + ".json"


def _label(source: ModelSpec | str) -> str:
    return source.name if isinstance(source, ModelSpec) else os.path.splitext(os.path.basename(source))[0]


def _default_name(cfg: DictConfig, s: Settings, sources: list[ModelSpec | str]) -> str:
    what = cfg.preset or "-".join(_label(source) for source in sources)[:80]
    parts = [datetime.date.today().isoformat(), what, torch.device(s.device).type, "-".join(s.precisions)]
    if s.channels_last:
        parts.append("cl")
    if s.runtimes != ["eager"]:
        parts.append("-".join(s.runtimes))
    return "_".join(parts)


def _versions() -> dict[str, str | None]:
    """Versions of the runtimes' packages (None when not installed)."""
    found = {}
    for package in ("onnxruntime", "onnx"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def run(cfg: DictConfig) -> dict[str, Any]:
    """Benchmark every model of `cfg` (conf/benchmark.yaml), print the table and write it as
    Markdown and JSON to `cfg.out_dir`; returns the report."""
    probe_run_dir(cfg.out_dir, "out_dir", "the output folder")
    sources, cfg = resolve_models(cfg)
    s = resolve_settings(cfg)
    needs_data = s.fidelity or "onnxruntime_int8" in s.runtimes
    if any(isinstance(source, ModelSpec) for source in sources):
        if "onnxruntime_int8" in s.runtimes:
            s.notes.append("registry models have random weights: INT8 calibrates them on random N(0, 1) input.")
        if s.fidelity:
            s.notes.append("fidelity needs a trained file with a stored data config; registry models get none.")
    for note in s.notes:
        print(f"note: {note}")
    rows = []
    report = {"schema": SCHEMA, "environment": {**environment(s.device), **_versions()}, "settings": asdict(s),
              "results": rows}
    name = cfg.name or _default_name(cfg, s, sources)
    for source in tqdm(sources, desc="benchmark", unit="model", file=sys.stdout):
        data = None
        if isinstance(source, ModelSpec):
            model, spec = source.build(), source
        else:
            art = artifacts.load(source)
            model, spec = art.model, art.spec
            if needs_data:
                data = trained_loaders(art, s.data_batch_size, s.calibration_batches)
                if data is None:
                    note = f"{source} stores no data config: INT8 calibrates on random input, no fidelity."
                    report["settings"]["notes"].append(note)
                    print(f"note: {note}")
        rows += benchmark_model(model, spec, s, data)
        del model
        if torch.device(s.device).type == "cuda":
            torch.cuda.empty_cache()
        # Written after every model, so a run stopped by a time limit keeps the models it finished.
        md, js = write_report(report, cfg.out_dir, name)
    print(to_markdown(report))
    print(f"wrote {md} and {js}")
    return report
