"""Inference speed, size and memory of each model's residual, BN-folded and plain (RM) form, in each
runtime (eager, torch.compile, ONNX Runtime, ONNX Runtime INT8) and precision.

The paper's protocol (§4: "tested on a Tesla V100 GPU with a batch size of 128 by first feeding 50
batches to warm the hardware up, then 50 batches with time usage recorded") is the default on GPU:
eval mode, `torch.inference_mode`, random input at the model's resolution, `cudnn.benchmark` on,
timing between CUDA events. Every (form, runtime) of a model is warmed up, then the timed blocks
run `repeats` times, interleaved: repeat 1 of every form and runtime, then repeat 2, ..., so load
changes on a shared machine hit all of them alike and their ratios are measured in one run. img/s
is the median over repeats with min/max as the spread (flagged when wide: `bench.report.WIDE_SPREAD`). On
CPU the protocol would take hours, so smaller defaults apply (CPU_DEFAULTS) unless set explicitly,
and the report says so; torch runs on physical cores minus one thread unless `threads` is set.

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
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

import artifacts
import models
import rm
from bench.export import EXPORTERS
from bench.fidelity import compare, predictions
from bench.forms import build_forms
from bench.memory import peak_activation_memory
from bench.report import FORMS, WIDE_SPREAD, source_labels, spread_warning, summary, to_markdown, write_report
from bench.runtimes import RUNTIMES, RuntimeContext, check_runtimes
from bench.timing import cpu_threads, time_interleaved
from engine.environment import environment
from engine.faults import probe_run_dir
from engine.inputs import trained_loaders
from engine.validation import backend_flags
from models import ModelSpec
from models.complexity import count_macs, count_params
from models.mobilenet import exact_forms

SCHEMA = "rmnet-benchmark/3"   # 3: rows keyed by source (`source`, `file`), `sources`, threads, spread
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROTOCOL = {"batch_size": [128], "warmup": 50, "iters": 50}
CPU_DEFAULTS = {"batch_size": [8], "warmup": 2, "iters": 5}
CHECK_TOLERANCE = 1e-4   # relative output error of a float32 runtime against eager float32
PRESET_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "presets"


@dataclass
class Settings:
    device: str
    threads: int = 1               # torch (and ONNX Runtime) intra-op threads while measuring
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
    wide_spread: float = WIDE_SPREAD   # rows whose repeats spread wider are flagged (bench/report.py)


def _plain_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def _threads(cfg: DictConfig, on_cpu: bool) -> int:
    """`threads`, else on CPU physical cores minus one, at least one. Intra-op threads meet at a barrier
    after every operator, so a core taken by another process stalls all of them: with torch's default of
    one thread per core, resnet20's plain form (batch 8) ran 4.1 img/s on a 2-core machine at load 11,
    72.9 img/s on one thread (issue 20: 11.4 against 1,081). Leaving a core to the rest of the machine
    keeps the count stable under light background load (one thread on 2 cores); hyper-threads add
    noise, not speed. On GPU the threads only launch kernels: torch's own count is kept (and recorded)."""
    if cfg.threads is not None:
        if int(cfg.threads) < 1:
            raise ValueError(f"threads must be >= 1 (null: physical cores minus one on CPU), got {cfg.threads}")
        return int(cfg.threads)
    return cpu_threads() if on_cpu else torch.get_num_threads()


def _device(cfg: DictConfig) -> str:
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    device = "cpu" if device == "auto" else device
    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device} but CUDA is not available here; use device=cpu (or auto)")
        index, count = torch.device(device).index, torch.cuda.device_count()
        if index is not None and index >= count:
            raise ValueError(f"device={device} but this machine has {count} CUDA devices: use cuda:0 to "
                             f"cuda:{count - 1}")
    return device


def resolve_settings(cfg: DictConfig) -> Settings:
    """Validate the config and fill protocol defaults (paper protocol on GPU, CPU_DEFAULTS on CPU)."""
    device = _device(cfg)
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
    return Settings(device=device, threads=_threads(cfg, on_cpu), precisions=precisions,
                    channels_last=bool(cfg.channels_last), runtimes=runtimes, compile_mode=cfg.compile_mode, batch_sizes=batch_sizes,
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
    for what, items in (("models", names), ("checkpoints", [os.path.realpath(f) for f in files])):
        twice = sorted({str(item) for item in items if items.count(item) > 1})
        if twice:
            raise ValueError(f"{what} lists {', '.join(twice)} twice: each is benchmarked once")
    kwargs = OmegaConf.to_container(cfg.model_kwargs) if cfg.model_kwargs else {}
    sources: list[ModelSpec | str] = []
    for name in names:
        stem = cfg.stem or models.model_stems(name)[0]  # raises UnknownModelError with suggestions
        sources.append(ModelSpec(name, int(cfg.num_classes or (10 if stem == "cifar" else 1000)), stem, kwargs))
    return sources + files, cfg


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


def benchmark_model(model: nn.Module, spec: ModelSpec, s: Settings, data: tuple | None = None,
                    source: str | None = None, file: str | None = None) -> list[dict[str, Any]]:
    """One row per (precision, batch size, runtime, form), at the spec's input size, each naming its
    `source` label (`report.source_labels`; default the model name) and `file` (None: a registry
    model). `data`: the (calibration, validation) loaders of a trained file
    (`engine.inputs.trained_loaders`), else None."""
    size = spec.input_size
    name = spec.name or "plain"
    ident = {"source": source or name, "file": file, "model": name}
    device = torch.device(s.device)
    model = model.to(device).eval()
    chosen, inexact = exact_forms(list(s.forms), model)   # a ReLU6 model has no exact plain form
    if inexact:
        print(f"note: {spec.label}: {inexact}", file=sys.stderr)
    forms = build_forms(model, spec, chosen)
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
        base = name if file is None else f"{name}_{_slug(ident['source'])}"
        path = os.path.join(s.export_dir, f"{base}_{spec.stem}_plain{suffix}")
        exports[kind] = exporter(forms["plain"], torch.randn(2, 3, size, size, device=device), path)

    rows = []
    with tempfile.TemporaryDirectory(prefix="rmnet-bench-") as work:
        ctx = RuntimeContext(work, example=torch.randn(2, 3, size, size), compile_mode=s.compile_mode,
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
                    rows += _time_batch(runs, modules, batch, precision, ident, spec, s, static, checks,
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


def _time_batch(runs: dict, modules: dict, batch: int, precision: str, ident: dict, spec: ModelSpec, s: Settings,
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
                    print(f"warning: {ident['source']} {form} in {runtime} differs from the {reference_form} model by "
                          f"{checks[runtime, form]['max_rel']:.1e} relative (tolerance {CHECK_TOLERANCE:.0e})",
                          file=sys.stderr)
        memory = None
        if s.memory and torch_runtime:
            memory = peak_activation_memory(run, inputs[True], eager_model=modules[form])
        speeds = summary([batch * s.iters / t for t in seconds[runtime, form]])
        rows.append({
            **ident, "stem": spec.stem, "num_classes": spec.num_classes, "input_size": spec.input_size,
            "form": form, "runtime": runtime, "precision": precision, "batch_size": batch, **static[form],
            "img_per_s": speeds, "wide_spread": speeds["spread"] > s.wide_spread,
            "latency_ms": summary([1000 * t / s.iters for t in seconds[runtime, form]]),
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


def _slug(label: str) -> str:
    """A source label as part of a file name: `run1/deploy.pt` -> `run1-deploy`."""
    return re.sub(r"[^\w.-]+", "-", re.sub(r"\.pth?$", "", label))


def _default_name(cfg: DictConfig, s: Settings, labels: list[str]) -> str:
    what = cfg.preset or "-".join(map(_slug, labels))[:80]
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


@contextmanager
def _measuring(s: Settings) -> Iterator[None]:
    """The run's thread count and, on CUDA, its device as the current one (set before anything is built,
    as torchvision's reference sets it first), both restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        with torch.cuda.device(torch.device(s.device)) if torch.device(s.device).type == "cuda" else nullcontext():
            yield
    finally:
        torch.set_num_threads(threads)


def _load(source: ModelSpec | str, label: str, s: Settings, report: dict[str, Any]
          ) -> tuple[nn.Module, ModelSpec, tuple | None]:
    """(model, spec, data loaders or None) of one source, recorded in `report["sources"]` with what its
    rows were measured with: the spec, the input size and the data config of a file."""
    data = art = None
    if isinstance(source, ModelSpec):
        model, spec = source.build(), source
    else:
        art = artifacts.load(source)
        model, spec = art.model, art.spec
        if s.fidelity or "onnxruntime_int8" in s.runtimes:
            data = trained_loaders(art, s.data_batch_size, s.calibration_batches)
            if data is None:
                note = f"{label} stores no data config: INT8 calibrates on random input, no fidelity."
                report["settings"]["notes"].append(note)
                print(f"note: {note}")
    report["sources"].append({"source": label, "file": None if art is None else source,
                              "kind": "registry" if art is None else art.kind, "input_size": spec.input_size,
                              "spec": spec.to_dict(), "data_config": None if art is None else art.data_config})
    return model, spec, data


def run(cfg: DictConfig) -> dict[str, Any]:
    """Benchmark every model of `cfg` (conf/benchmark.yaml), print the table and write it as
    Markdown and JSON to `cfg.out_dir`; returns the report."""
    probe_run_dir(cfg.out_dir, "out_dir", "the output folder")
    sources, cfg = resolve_models(cfg)
    s = resolve_settings(cfg)
    labels = source_labels(sources)
    if any(isinstance(source, ModelSpec) for source in sources):
        if "onnxruntime_int8" in s.runtimes:
            s.notes.append("registry models have random weights: INT8 calibrates them on random N(0, 1) input.")
        if s.fidelity:
            s.notes.append("fidelity needs a trained file with a stored data config; registry models get none.")
    for note in s.notes:
        print(f"note: {note}")
    rows: list[dict[str, Any]] = []
    name = cfg.name or _default_name(cfg, s, labels)
    with _measuring(s):
        report = {"schema": SCHEMA, "environment": {**environment(s.device), **_versions()}, "settings": asdict(s),
                  "sources": [], "results": rows}
        for source, label in tqdm(list(zip(sources, labels)), desc="benchmark", unit="model", file=sys.stdout,
                                  disable=None):
            model, spec, data = _load(source, label, s, report)
            rows += benchmark_model(model, spec, s, data, source=label, file=report["sources"][-1]["file"])
            del model
            if torch.device(s.device).type == "cuda":
                torch.cuda.empty_cache()
            # Written after every model, so a run stopped by a time limit keeps the models it finished.
            markdown = to_markdown(report)
            md, js = write_report(report, markdown, cfg.out_dir, name)
    print(markdown)
    print(f"wrote {md} and {js}")
    if warning := spread_warning(rows):
        print(warning, file=sys.stderr)
    return report
