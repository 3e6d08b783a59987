"""A per-layer latency table, as NetAdapt (Yang et al., 2018) and HALP (Shen et al., 2022) build
them: a model's latency is predicted as the sum of its layers' latencies, each layer shape measured
once in the deploy runtime and cached, so a pruner can price thousands of candidate widths.

A model is read as deployed: BatchNorm folded into its convs (`bench.forms.fold_bn`), then traced by
torch.fx with the input shapes propagated. Every node that computes a tensor is a layer: convs,
Linear, pools, flatten, SE's pieces, and a residual model's additions. A conv whose only reader is
a ReLU is one layer with it, because ONNX Runtime fuses Conv+Relu (timing the ReLU apart would add
a pass over memory the deployed graph does not make). A layer's *signature* is its operator, its
settings (channels, kernel, stride, padding, groups), its input shapes (batch and HxW included),
the runtime and the thread count; each signature is exported as one small graph (static shapes)
and timed once.

The sum leaves out what one graph shares between layers (one session call instead of one per
layer, fusions across layers, cache reuse), so `check` compares it with the whole model's time.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from .export import ort_session, to_onnx
from .forms import fold_bn
from .quantize import quantize_int8
from .timing import time_interleaved

SCHEMA = "rmnet-latency/1"
RUNTIMES = ("onnxruntime", "onnxruntime_int8", "eager", "cuda")
WARMUP, ITERS, REPEATS = 10, 20, 15   # per layer: median of REPEATS interleaved blocks of ITERS calls
# Timer: (run one forward of the layer, the layer) -> milliseconds per forward.
Timer = Callable[[Callable[[], Any], "Layer"], float]


@dataclass(frozen=True)
class _Slot:
    index: int   # 0: the layer's input; i > 0: the buffer `const{i}`


def _fill(value: Any, tensors: list[torch.Tensor]) -> Any:
    """`value` (a node's args: tuples, lists, dicts, slices, numbers) with each _Slot replaced."""
    if isinstance(value, _Slot):
        return tensors[value.index]
    if isinstance(value, (tuple, list)):
        return type(value)(_fill(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, tensors) for k, v in value.items()}
    return value


class _Op(nn.Module):
    """One layer as a module of one input: `fn(*args, **kwargs)` with the layer's first tensor operand
    as the input and the others (the shortcut of an addition, the gate of SE) as constant buffers of
    their traced shapes."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, consts: list[torch.Tensor], relu: bool):
        super().__init__()
        self.fn, self.args, self.kwargs, self.relu = fn, args, kwargs, relu
        if isinstance(fn, nn.Module):
            self.op = fn
        for i, c in enumerate(consts, 1):
            self.register_buffer(f"const{i}", c)
        self.n_consts = len(consts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = [x, *(getattr(self, f"const{i}") for i in range(1, self.n_consts + 1))]
        y = self.fn(*_fill(self.args, tensors), **_fill(self.kwargs, tensors))
        return torch.relu(y) if self.relu else y


@dataclass
class Layer:
    key: str                  # the signature, the cache key
    name: str                 # the module path (a call of a module) or the fx node's name
    kind: str                 # operator name, "+relu" when fused
    shape: tuple[int, ...]    # the (first) input's shape
    make: Callable[[], _Op]   # builds the layer module (lazily: a fake timer never needs it)


def _shape(value: Any) -> Any:
    return tuple(value.meta["tensor_meta"].shape) if isinstance(value, torch.fx.Node) else value


def _is_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.ReLU)
    return node.op in ("call_function", "call_method") and node.target in (torch.relu, F.relu, "relu")


def _callable(node: torch.fx.Node, modules: dict[str, nn.Module]) -> tuple[Callable, str, str]:
    """The node's operation, its name and its settings (for the signature)."""
    if node.op == "call_module":
        module = modules[node.target]
        return module, type(module).__name__, module.extra_repr()
    if node.op == "call_method":
        name = node.target
        return (lambda x, *a, **k: getattr(x, name)(*a, **k)), name, ""
    return node.target, getattr(node.target, "__name__", str(node.target)), ""


def _layer(node: torch.fx.Node, modules: dict[str, nn.Module], relu: bool, runtime: str, batch: int,
           threads: int) -> Layer:
    fn, name, settings = _callable(node, modules)
    operands: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), operands.append)
    if not operands:
        raise ValueError(f"bench.latency cannot time {node.name} ({name}): it reads no tensor")
    slots = {n: _Slot(i) for i, n in enumerate(dict.fromkeys(operands))}
    args, kwargs = (torch.fx.node.map_arg(a, slots.__getitem__) for a in (node.args, node.kwargs))
    kind = name + ("+relu" if relu else "")
    shapes = [_shape(n) for n in slots]
    key = _key(kind, settings, shapes, args, kwargs, runtime, batch, threads)

    def make() -> _Op:
        gen = torch.Generator().manual_seed(0)
        consts = [torch.randn(*shape, generator=gen) for shape in shapes[1:]]
        op = copy.deepcopy(fn) if isinstance(fn, nn.Module) else fn
        return _Op(op, args, kwargs, consts, relu).eval()

    return Layer(key, node.target if node.op == "call_module" else node.name, kind, shapes[0], make)


def _key(kind: str, settings: str, shapes: list, args: Any, kwargs: dict, runtime: str, batch: int,
         threads: int) -> str:
    return json.dumps([kind, settings, shapes, repr((args, sorted(kwargs.items()))), runtime, batch, threads],
                      default=str)


def module_layer(module: nn.Module, shape: tuple[int, ...], relu: bool, runtime: str = "onnxruntime",
                 threads: int = 1) -> Layer:
    """The layer of a deployed model that calls `module` (a conv or Linear; on any device, meta
    included: its weights are never read) on an input of `shape` (batch first), with its ReLU fused
    when `relu`: the same signature as that layer found in a model by `layers`, so a table prices it
    from the same entry. Timing builds it with fresh weights on the CPU."""
    kind = type(module).__name__ + ("+relu" if relu else "")
    args = (_Slot(0),)
    key = _key(kind, module.extra_repr(), [tuple(shape)], args, {}, runtime, shape[0], threads)

    def make() -> _Op:
        op = copy.deepcopy(module).to_empty(device="cpu")
        with torch.random.fork_rng(devices=[]):   # seeded weights, the caller's random state untouched
            torch.manual_seed(0)
            op.reset_parameters()
        return _Op(op, args, {}, [], relu).eval()

    return Layer(key, "", kind, tuple(shape), make)


def layers(model: nn.Module, input_size: int, batch: int = 1, runtime: str = "onnxruntime",
           threads: int = 1) -> list[Layer]:
    """The deployed model's layers in forward order (BN folded, Conv+ReLU as one)."""
    graph = fold_bn(copy.deepcopy(model).float().cpu().eval())
    ShapeProp(graph).propagate(torch.zeros(batch, 3, input_size, input_size))
    modules = dict(graph.named_modules())
    out, fused = [], set()
    for node in graph.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method") or node in fused:
            continue
        if not isinstance(node.meta.get("tensor_meta"), torch.fx.passes.shape_prop.TensorMetadata):
            continue   # sizes, getitem of tuples: no tensor computed
        users = list(node.users)
        relu = (len(users) == 1 and _is_relu(users[0], modules) and node.op == "call_module"
                and isinstance(modules[node.target], nn.Conv2d))
        fused.update(users if relu else ())
        out.append(_layer(node, modules, relu, runtime, batch, threads))
    return out


class LatencyTable:
    """Measured latency per layer signature in one runtime, batch size and thread count, cached in
    memory and, with `cache`, in a JSON file that later tables (and runs) read first."""

    def __init__(self, runtime: str = "onnxruntime", batch_size: int = 1, threads: int | None = None,
                 cache: str | None = None, timer: Timer | None = None):
        if runtime not in RUNTIMES:
            raise ValueError(f"latency runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime == "cuda" and not torch.cuda.is_available():
            raise ValueError("latency runtime cuda needs a CUDA device; use onnxruntime, onnxruntime_int8 or eager")
        if batch_size < 1:
            raise ValueError(f"latency batch_size must be >= 1, got {batch_size}")
        self.runtime, self.batch_size, self.cache = runtime, batch_size, cache
        self.threads = threads or torch.get_num_threads()
        self.timer = timer
        self.entries: dict[str, dict[str, Any]] = {}
        if cache and os.path.isfile(cache):
            with open(cache) as f:
                stored = json.load(f)
            if stored.get("schema") != SCHEMA:
                raise ValueError(f"{cache} is not a latency table ({SCHEMA}): delete it or pass another cache")
            self.entries = stored["entries"]

    def layer_ms(self, layer: Layer) -> float:
        self.measure([layer])
        return self.entries[layer.key]["ms"]

    def module_ms(self, module: nn.Module, shape: tuple[int, ...], relu: bool = False) -> float:
        """The table's ms for a conv or Linear of `module`'s settings on an input of `shape` (its
        batch replaced by the table's), with its ReLU fused when `relu`: a pruner prices a width
        without building the model (`module_layer`)."""
        return self.layer_ms(module_layer(module, (self.batch_size, *shape[1:]), relu, self.runtime, self.threads))

    def measure(self, found: list[Layer], whole: Layer | None = None) -> float | None:
        """Time the signatures of `found` not in the table yet, and `whole` (a model, not stored)
        if given, returning its ms. Without a timer they are timed interleaved (`time_interleaved`:
        every layer's first block, then every second one, ...), so load changes on a shared machine
        hit all of them alike and the whole model's time is comparable with its layers'."""
        missing = list({layer.key: layer for layer in found if layer.key not in self.entries}.values())
        timed = missing + ([whole] if whole else [])
        runs = {layer.key: self._runner(layer.make, layer.shape) for layer in timed}
        if self.timer is not None:
            ms = {layer.key: float(self.timer(runs[layer.key], layer)) for layer in timed}
        else:
            ms = self._interleaved(runs) if runs else {}
        for layer in missing:
            self.entries[layer.key] = {"kind": layer.kind, "input": list(layer.shape), "ms": ms[layer.key]}
        if missing:
            self._save()
        return ms[whole.key] if whole else None

    def model_ms(self, model: nn.Module, input_size: int) -> float:
        """Predicted latency: the sum over the deployed model's layers, each signature measured once."""
        found = layers(model, input_size, self.batch_size, self.runtime, self.threads)
        self.measure(found)
        return sum(self.entries[layer.key]["ms"] for layer in found)

    def check(self, model: nn.Module, input_size: int) -> dict[str, float]:
        """The table's sum against the whole deployed model (BN folded) measured as one graph in the
        same runtime, with its unmeasured layers: ratio = sum / whole."""
        found = layers(model, input_size, self.batch_size, self.runtime, self.threads)
        whole = Layer("model", "model", "model", (self.batch_size, 3, input_size, input_size),
                      lambda: _Op(fold_bn(copy.deepcopy(model).float().cpu().eval()), (_Slot(0),), {}, [], False))
        whole_ms = self.measure(found, whole)
        total = sum(self.entries[layer.key]["ms"] for layer in found)
        return {"sum_ms": total, "whole_ms": whole_ms, "ratio": total / whole_ms}

    def to_markdown(self) -> str:
        head = (f"Latency table: {self.runtime}, batch {self.batch_size}, {self.threads} threads; "
                f"ms per forward (median of {REPEATS} x {ITERS}).\n\n| layer | input | settings | ms |\n"
                "| --- | --- | --- | --- |\n")
        rows = []
        for key, e in sorted(self.entries.items(), key=lambda kv: -kv[1]["ms"]):
            settings = json.loads(key)[1]
            rows.append(f"| {e['kind']} | {'x'.join(map(str, e['input']))} | {settings} | {e['ms']:.4f} |")
        return head + "\n".join(rows) + "\n"

    def _save(self) -> None:
        if self.cache:
            os.makedirs(os.path.dirname(os.path.abspath(self.cache)), exist_ok=True)
            tmp = self.cache + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"schema": SCHEMA, "entries": self.entries}, f, indent=1)
            os.replace(tmp, self.cache)

    def _runner(self, make: Callable[[], nn.Module], shape: tuple[int, ...]) -> Callable[[], Any]:
        """One forward of the layer in the runtime, built on its first call."""
        state: dict[str, Callable[[], Any]] = {}

        def run() -> Any:
            if "run" not in state:
                state["run"] = self._prepare(make(), shape)
            return state["run"]()
        return run

    def _prepare(self, module: nn.Module, shape: tuple[int, ...]) -> Callable[[], Any]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        if self.runtime in ("eager", "cuda"):
            device = "cuda" if self.runtime == "cuda" else "cpu"
            module, x = module.to(device), x.to(device)
            return lambda: module(x)
        folder = tempfile.mkdtemp(prefix="latency-")
        path = to_onnx(module, x, os.path.join(folder, "layer.onnx"), dynamic_batch=False)
        if self.runtime == "onnxruntime_int8":
            quantize_int8(path, os.path.join(folder, "layer.int8.onnx"), [x])
            path = os.path.join(folder, "layer.int8.onnx")
        session, feed = ort_session(path, self.threads), {"input": x.numpy()}
        return lambda: session.run(None, feed)

    def _interleaved(self, runs: dict[str, Callable[[], Any]]) -> dict[str, float]:
        """Milliseconds per call of each run: the median of REPEATS interleaved blocks of ITERS calls."""
        device = torch.device("cuda" if self.runtime == "cuda" else "cpu")
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for run in runs.values():
                run()   # build (export, quantize, open the session) before any timing
            seconds = time_interleaved(runs, device, WARMUP, ITERS, REPEATS)
        finally:
            torch.set_num_threads(threads)
        return {key: statistics.median(s) / ITERS * 1000 for key, s in seconds.items()}
