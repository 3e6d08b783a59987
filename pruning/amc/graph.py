"""Which channels AMC may prune in a model, and what the model costs for any choice of widths.

A *segment* is a set of channels AMC decides on with one action: the output channels of a dense
conv (the producer, with its BN and activation) that reach exactly one dense conv or Linear (the
reader), possibly through depthwise convs (buffers, which follow the channel count, as in AMC's
reference code). Channels that a residual addition ties, that feed or leave a grouped
(non-depthwise) conv, or that are the network's output are fixed.

The cost model is exact: every conv and Linear costs coef * n_a * n_b MACs, n_a and n_b the widths
of the segments it reads and writes (1 for a fixed side, whose width is folded into coef), so
`Graph.macs(counts)` equals `models.complexity.count_macs` of the BN-folded pruned model (tests).
`graph_cost` prices counts in a budget's kind (MACs, params, latency: `pruning.cost`) from the widths
each conv and Linear takes (`Graph.widths`).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torchvision.models as tvm

from models.mobilenet import InvertedResidual, MobileNetV2, MobileNetV2RM
from models.resnet import ResNet

from ..budget import Budget
from ..cost import Widths, width_cost
from ..plain import parse_chain
from ..residual import structure
from ..surgery import PruneError


@dataclass
class Segment:
    producer: str                 # module paths, resolved with model.get_submodule on any copy
    bn: str
    prelu: str | None             # a per-channel PReLU after the BN (sliced with the channels)
    buffers: list[tuple[str, str, str | None]]   # depthwise (conv, BN, PReLU) between producer and reader
    reader: str                   # dense conv or Linear reading the channels
    reader_bn: str | None         # the BN after a reader conv: takes the refit's intercept
    channels: int


@dataclass
class Term:
    coef: int
    a: int | None                 # segment indices whose widths multiply coef (None: fixed side)
    b: int | None
    layer: str                    # the conv's or Linear's module path
    full: Widths                  # its inputs (features of a Linear), outputs and groups


@dataclass
class Graph:
    segments: list[Segment]
    terms: list[Term]
    layer_state: list[list[float]] = field(default_factory=list)   # AMC's static state per segment

    def macs(self, counts: list[int]) -> int:
        def n(s: int | None) -> int:
            return 1 if s is None else counts[s]
        return sum(t.coef * n(t.a) * n(t.b) for t in self.terms)

    @property
    def full(self) -> list[int]:
        return [s.channels for s in self.segments]

    def widths(self, counts: list[int]) -> dict[str, Widths]:
        """The widths of every conv, Linear and PReLU that a segment resizes, when segment k keeps counts[k]."""
        out = {}
        for t in self.terms:
            if t.a is None and t.b is None:
                continue
            cin, cout, groups = t.full
            if groups > 1:            # a depthwise buffer: one channel per group
                out[t.layer] = (counts[t.a],) * 3
                continue
            if t.a is not None:       # a Linear reads cin // channels features of each channel
                cin = cin // self.segments[t.a].channels * counts[t.a]
            out[t.layer] = (cin, cout if t.b is None else counts[t.b], groups)
        for k, seg in enumerate(self.segments):   # per-channel PReLUs after the producer and the buffers
            for prelu in [seg.prelu, *(p for _, _, p in seg.buffers)]:
                if prelu is not None:
                    out[prelu] = (counts[k], counts[k], 1)
        return out

    def segment_macs(self, k: int) -> int:
        """MACs (at full width) of the layers whose cost scales with segment k's width."""
        return sum(t.coef * math.prod(self.full[s] for s in (t.a, t.b) if s is not None)
                   for t in self.terms if k in (t.a, t.b))


def graph_cost(graph: Graph, model: nn.Module, budget: Budget) -> Callable[[list[int]], float]:
    """The cost of counts in `budget.kind`, for `model` (the full-width model `graph` describes)."""
    return width_cost(budget, model, graph.widths, graph.full, graph.macs)


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _prelu_path(model: nn.Module, path: str | None) -> str | None:
    """`path` when it names a per-channel PReLU (which must be sliced with the channels)."""
    if path is None:
        return None
    m = model.get_submodule(path)
    return path if isinstance(m, nn.PReLU) and m.num_parameters > 1 else None


def plain_graph(model: nn.Sequential, input_size: int) -> Graph:
    """Segments of a plain chain (`rm.convert(model, fuse_bn=False)`: Conv-BN-act units, a Linear head)."""
    units, head = parse_chain(model)
    convs = [model[u.conv] for u in units]
    segments, seg_of_unit = [], []
    for i, (unit, conv) in enumerate(zip(units, convs)):
        if is_depthwise(conv):       # a buffer: its width is its input's
            seg_of_unit.append(seg_of_unit[i - 1] if i else None)
            continue
        seg_of_unit.append(None)
        j, buffers = i + 1, []
        while j < len(units) and is_depthwise(convs[j]):
            buffers.append((str(units[j].conv), str(units[j].bn), _prelu_path(model, _act(units[j]))))
            j += 1
        if conv.groups != 1 or (j < len(units) and convs[j].groups != 1) or (j == len(units) and head is None):
            continue
        reader, reader_bn = (str(units[j].conv), str(units[j].bn)) if j < len(units) else (str(head), None)
        segments.append(Segment(str(unit.conv), str(unit.bn), _prelu_path(model, _act(unit)), buffers, reader,
                                reader_bn, conv.out_channels))
        seg_of_unit[i] = len(segments) - 1
    io = {}
    for i, unit in enumerate(units):
        io[str(unit.conv)] = (seg_of_unit[i - 1] if i else None, seg_of_unit[i])
    if head is not None:
        io[str(head)] = (seg_of_unit[-1], None)
    return _graph(model, segments, io, input_size)


def _act(unit) -> str | None:
    return None if unit.act is None else str(unit.act)


MOBILENETV2S = (MobileNetV2, MobileNetV2RM)   # one layout: stem, InvertedResidual blocks, last, fc


def check_residual(model: nn.Module) -> None:
    """AMC's residual form knows the blocks of MobileNetV2 (mobilenetv2, mobilenetv2_rm) and of ResNets."""
    if not isinstance(model, (*MOBILENETV2S, ResNet, tvm.ResNet)):
        raise PruneError(f"AMC on the residual form supports MobileNetV2 (mobilenetv2, mobilenetv2_rm) and ResNets, not "
                         f"{type(model).__name__}; prune it through RM alone (amc.forms=[rm])")


def residual_graph(model: nn.Module, input_size: int) -> Graph:
    """Segments of a residual model: the channels inside blocks (MobileNetV2's expansions, a ResNet
    block's inner convs) and, in MobileNetV2, the stem (its first block has no shortcut) and the last
    conv before the classifier. The stream channels that additions tie stay."""
    check_residual(model)
    segments = _mobilenetv2_segments(model) if isinstance(model, MOBILENETV2S) else _resnet_segments(model)
    io: dict[str, tuple[int | None, int | None]] = {}
    for k, seg in enumerate(segments):
        io[seg.producer] = (io.get(seg.producer, (None, None))[0], k)
        for conv, _, _ in seg.buffers:
            io[conv] = (k, k)
        io[seg.reader] = (k, io.get(seg.reader, (None, None))[1])
    return _graph(model, segments, io, input_size)


def _mobilenetv2_segments(model: MobileNetV2 | MobileNetV2RM) -> list[Segment]:
    segments, producer = [], ("stem.0", "stem.1")
    for name, block in model.named_children():
        if not isinstance(block, InvertedResidual):
            continue
        buffers = [(f"{name}.conv2", f"{name}.bn2", None)]
        if block.expand:
            producer = (f"{name}.conv1", f"{name}.bn1")
        elif producer is None:   # a block reading a stream without expand conv: nothing to prune inside
            continue
        channels = model.get_submodule(producer[0]).out_channels
        segments.append(Segment(*producer, None, buffers, f"{name}.conv3", f"{name}.bn3", channels))
        producer = None
    segments.append(Segment("last.0", "last.1", None, [], "fc", None, model.last[0].out_channels))
    return segments


def _resnet_segments(model: nn.Module) -> list[Segment]:
    blocks, _ = structure(model)
    segments = []
    for b in blocks:
        for (conv, bn), (reader, reader_bn) in zip(b.pairs, b.pairs[1:]):
            c, r = getattr(b.module, conv), getattr(b.module, reader)
            if c.groups == 1 and r.groups == 1:
                segments.append(Segment(f"{b.name}.{conv}", f"{b.name}.{bn}", None, [], f"{b.name}.{reader}",
                                        f"{b.name}.{reader_bn}", c.out_channels))
    return segments


@torch.no_grad()
def _graph(model: nn.Module, segments: list[Segment], io: dict[str, tuple[int | None, int | None]],
           input_size: int) -> Graph:
    """The cost terms of every conv and Linear (output sizes from one forward pass of a meta-device
    copy) and AMC's static state of each segment."""
    meta = copy.deepcopy(model).to("meta").eval()
    layers = {n: m for n, m in meta.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    shapes: dict[str, tuple[int, ...]] = {}
    for n, m in layers.items():
        m.register_forward_hook(lambda m, args, out, n=n: shapes.__setitem__(n, tuple(out.shape)))
    meta(torch.empty(1, 3, input_size, input_size, device="meta"))
    missing = [n for n in layers if n not in shapes]
    if missing:
        raise PruneError(f"layers {missing[:3]} are not used by the forward pass; AMC needs every conv in it")
    terms = []
    for name, m in layers.items():
        a, b = io.get(name, (None, None))
        if isinstance(m, nn.Linear):   # reads `per` features of each input channel (1 after pooling)
            per = m.in_features if a is None else m.in_features // segments[a].channels
            terms.append(Term(per * m.out_features, a, None, name, (m.in_features, m.out_features, 1)))
            continue
        spatial = math.prod(shapes[name][2:]) * math.prod(m.kernel_size)
        full = (m.in_channels, m.out_channels, m.groups)
        if is_depthwise(m) and a is not None:
            terms.append(Term(spatial, a, None, name, full))
        else:
            terms.append(Term(spatial * (m.in_channels // m.groups if a is None else 1) *
                              (m.out_channels if b is None else 1), a, b, name, full))
    graph = Graph(segments, terms)
    for k, seg in enumerate(segments):
        conv, reader = model.get_submodule(seg.producer), model.get_submodule(seg.reader)
        graph.layer_state.append([k, float(isinstance(reader, nn.Linear)), conv.in_channels, conv.out_channels,
                                  conv.stride[0], conv.kernel_size[0], graph.segment_macs(k)])
    return graph

