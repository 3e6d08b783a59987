"""Inference speed, size and memory of each model's residual, BN-folded and plain (RM) form.

The paper's protocol (§4: "tested on a Tesla V100 GPU with a batch size of 128 by first feeding 50
batches to warm the hardware up, then 50 batches with time usage recorded") is the default on GPU:
eval mode, `torch.inference_mode`, random input at the model's resolution, `cudnn.benchmark` on,
timing between CUDA events. The timed block runs `repeats` times after one warm-up and img/s is
the median over repeats with min/max as the spread. On CPU the protocol would take hours, so
smaller defaults apply (CPU_DEFAULTS) unless set explicitly, and the report says so.

Forms: `residual` (as trained), `bn_folded` (every conv+BN pair folded by torch.fx, the fair
baseline for a deployed residual net), `plain` (`rm.convert`). Parameters and MACs are counted and
the outputs of the folded and plain forms are checked against the residual form in float32 before
any precision change. Models are registry names (random weights, the stem's nominal input size) or
files (`checkpoints=[...]`, read by `artifacts.load`: a deploy artifact has its plain form only, and
every file is timed at the input size it was trained at).
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
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
from models import ModelSpec
from models.complexity import count_macs, count_params

from .export import EXPORTERS
from .memory import peak_activation_memory

SCHEMA = "rmnet-benchmark/1"
FORMS = ("residual", "bn_folded", "plain")
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROTOCOL = {"batch_size": [128], "warmup": 50, "iters": 50}
CPU_DEFAULTS = {"batch_size": [8], "warmup": 2, "iters": 5}
PRESET_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "presets"


@dataclass
class Settings:
    device: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: str | None = None  # a torch.compile mode, None for eager
    batch_sizes: list[int] = field(default_factory=lambda: list(PROTOCOL["batch_size"]))
    warmup: int = PROTOCOL["warmup"]
    iters: int = PROTOCOL["iters"]
    repeats: int = 3
    forms: list[str] = field(default_factory=lambda: list(FORMS))
    memory: bool = True
    check: bool = True
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
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {cfg.precision!r}")
    forms = _plain_list(cfg.forms)
    if not forms or set(forms) - set(FORMS):
        raise ValueError(f"forms must be a non-empty subset of {list(FORMS)}, got {forms}")
    export = _plain_list(cfg.export)
    if set(export) - set(EXPORTERS):
        raise ValueError(f"export must be a subset of {list(EXPORTERS)}, got {export}")
    if export and "plain" not in forms:
        raise ValueError("export writes the plain model: add `plain` to forms")
    compile_mode = {False: None, True: "default"}.get(cfg.compile, cfg.compile)
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
    if compile_mode and chosen["warmup"] < 1:
        raise ValueError("torch.compile compiles on the first call: use warmup >= 1 so it is not timed")
    if on_cpu and cfg.precision == "fp16":
        notes.append("fp16 on CPU runs slow fallback kernels; the figures say little about deployment.")
    return Settings(device=device, precision=cfg.precision, channels_last=bool(cfg.channels_last),
                    compile=compile_mode, batch_sizes=batch_sizes, warmup=int(chosen["warmup"]),
                    iters=int(chosen["iters"]), repeats=int(cfg.repeats), forms=forms, memory=bool(cfg.memory),
                    check=bool(cfg.check), export=export, export_dir=cfg.export_dir, notes=notes)


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


@contextmanager
def backend_flags(precision: str) -> Iterator[None]:
    """cudnn.benchmark on; TF32 only for precision=tf32 (fp32 means IEEE float32 convolutions,
    which PyTorch's cuDNN default of TF32 would otherwise silently replace)."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = torch.backends.cudnn.benchmark, conv.fp32_precision, matmul.fp32_precision
    torch.backends.cudnn.benchmark = True
    conv.fp32_precision = matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, conv.fp32_precision, matmul.fp32_precision = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_forward(model: nn.Module, x: torch.Tensor, warmup: int, iters: int, repeats: int) -> list[float]:
    """Seconds for `iters` forward passes, once per repeat, after `warmup` untimed passes."""
    for _ in range(warmup):
        model(x)
    _sync(x.device)
    seconds = []
    for _ in range(repeats):
        if x.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                model(x)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                model(x)
            seconds.append(time.perf_counter() - t0)
    return seconds


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def _prepare(model: nn.Module, s: Settings) -> nn.Module:
    model = model.to(dtype=PRECISIONS[s.precision])
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _input(batch: int, size: int, s: Settings) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size, device=s.device, dtype=PRECISIONS[s.precision])
    return x.contiguous(memory_format=torch.channels_last) if s.channels_last else x


def benchmark_model(model: nn.Module, spec: ModelSpec, s: Settings) -> list[dict[str, Any]]:
    """One row per (form, batch size), at the spec's input size. `model` is moved to the device and
    cast to the benchmark precision in place."""
    size = spec.input_size
    name = spec.name or "plain"
    model = model.to(s.device).eval()
    forms = build_forms(model, spec, s.forms)
    if not forms:
        raise ValueError(f"{spec.label} is a plain model: benchmark it with forms=[plain]")
    static = {form: {"params": count_params(m), "macs": count_macs(m, size)} for form, m in forms.items()}
    with backend_flags("fp32"):  # IEEE float32: cuDNN's default TF32 would swamp the conversion error
        checks = {form: rm.verify(model, m, size, dtypes=(torch.float32,))["float32"]
                  if s.check and spec.form == "residual" else None
                  for form, m in forms.items() if form != "residual"}
    exports = {}
    for kind in s.export:
        exporter, suffix = EXPORTERS[kind]
        path = os.path.join(s.export_dir, f"{name}_{spec.stem}_plain{suffix}")
        exports[kind] = exporter(forms["plain"], torch.randn(2, 3, size, size, device=s.device), path)

    rows = []
    with backend_flags(s.precision):
        for form, m in forms.items():
            eager = _prepare(m, s)
            runnable = torch.compile(eager, mode=s.compile) if s.compile else eager
            for batch in s.batch_sizes:
                x = _input(batch, size, s)
                seconds = time_forward(runnable, x, s.warmup, s.iters, s.repeats)
                rows.append({
                    "model": name, "stem": spec.stem, "num_classes": spec.num_classes,
                    "input_size": size, "form": form, "batch_size": batch, **static[form],
                    "img_per_s": _summary([batch * s.iters / t for t in seconds]),
                    "latency_ms": _summary([1000 * t / s.iters for t in seconds]),
                    "memory": peak_activation_memory(runnable, x, eager_model=eager) if s.memory else None,
                    "check": checks.get(form),
                    "export": exports if form == "plain" and exports else None,
                })
    return rows


def _fmt_mib(memory: dict | None, key: str) -> str:
    return "" if not memory or memory.get(key) is None else f"{memory[key]:.1f}"


def to_markdown(report: dict[str, Any]) -> str:
    env, s = report["environment"], report["settings"]
    cuda_mem = any(r["memory"] and r["memory"]["cuda_peak_mib"] is not None for r in report["results"])
    versions = f"torch {env['torch']}" + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env["cuda"] else "")
    lines = [
        f"# Inference benchmark ({env['date'][:10]})", "",
        f"- Device: {env['device_name']}; {versions}; commit {env['git_commit']}"
        + (f"; load average {load:.1f} at the start" if (load := env.get("load_average_1min")) is not None else ""),
        f"- Precision {s['precision']}, channels_last {s['channels_last']}, compile {s['compile'] or 'off'}; "
        f"{s['warmup']} warm-up + {s['iters']} timed iterations, {s['repeats']} repeats (median, min-max)",
        f"- Command: `{env['command']}`",
        *[f"- Note: {n}" for n in s["notes"]], "",
        "| model | batch | form | params (M) | GMACs | img/s | min-max | ms/batch | vs residual "
        "| act. mem MiB (lifetimes) |" + (" CUDA peak MiB |" if cuda_mem else "") + " max rel err (fp32) |",
        "|" + " --- |" * (11 + cuda_mem),
    ]
    base = {(r["model"], r["batch_size"]): r["img_per_s"]["median"]
            for r in report["results"] if r["form"] == "residual"}
    order = {name: i for i, name in enumerate(dict.fromkeys(r["model"] for r in report["results"]))}
    rows = sorted(report["results"], key=lambda r: (order[r["model"]], r["batch_size"], FORMS.index(r["form"])))
    for r in rows:
        speed = r["img_per_s"]
        ref = base.get((r["model"], r["batch_size"]))
        cells = [r["model"], r["batch_size"], r["form"], f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e9:.3f}",
                 f"{speed['median']:.1f}", f"{speed['min']:.1f}-{speed['max']:.1f}",
                 f"{r['latency_ms']['median']:.2f}", f"{speed['median'] / ref:.2f}x" if ref else "",
                 _fmt_mib(r["memory"], "lifetime_peak_mib")]
        if cuda_mem:
            cells.append(_fmt_mib(r["memory"], "cuda_peak_mib"))
        cells.append(f"{r['check']['max_rel']:.1e}" if r["check"] else "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    exports = {(r["model"], kind): e for r in rows if r["export"] for kind, e in r["export"].items()}
    if exports:
        lines.append("")
        lines += [f"Export {kind} of {model} plain: `{e['path']}`, output vs PyTorch max rel error "
                  f"{e['max_rel']:.1e} ({e['runtime']})" for (model, kind), e in exports.items()]
    memory = next((r["memory"] for r in report["results"] if r["memory"]), None)
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
    parts = [datetime.date.today().isoformat(), what, torch.device(s.device).type, s.precision]
    if s.channels_last:
        parts.append("cl")
    if s.compile:
        parts.append(f"compile-{s.compile}")
    return "_".join(parts)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Benchmark every model of `cfg` (conf/benchmark.yaml), print the table and write it as
    Markdown and JSON to `cfg.out_dir`; returns the report."""
    sources, cfg = resolve_models(cfg)
    s = resolve_settings(cfg)
    for note in s.notes:
        print(f"note: {note}")
    rows = []
    for source in tqdm(sources, desc="benchmark", unit="model", file=sys.stdout):
        if isinstance(source, ModelSpec):
            model, spec = source.build(), source
        else:
            art = artifacts.load(source)
            model, spec = art.model, art.spec
        rows += benchmark_model(model, spec, s)
        del model
        if torch.device(s.device).type == "cuda":
            torch.cuda.empty_cache()
    report = {"schema": SCHEMA, "environment": environment(s.device), "settings": asdict(s), "results": rows}
    md, js = write_report(report, cfg.out_dir, cfg.name or _default_name(cfg, s, sources))
    print(to_markdown(report))
    print(f"wrote {md} and {js}")
    return report
