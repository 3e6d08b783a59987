"""The graph-level RM pass: a module without a registered converter is traced with torch.fx and its
graph is converted, so the order of `forward` comes from `forward` itself and a residual block needs
no converter of its own.

Leaves of the trace are torch.nn's own modules (conv, BN, activations, pooling, Linear, ...), the
plain-chain modules (`rm.SqueezeExcite`) and every module with a registered converter, which keeps
converting it. A few functions map to their module equivalents (relu, flatten, mean over H and W,
adaptive pooling; dropout is a no-op in eval). The graph is read as paths: a path is the leaves
applied from a fork (a tensor used more than once) on. An `add` of paths that all start at one fork
and use it entirely becomes one item list in the converter's IR, through the rules every converter
uses (`rules.rm_residual`, `rules.fuse_branches`, `blocks.preact_residual`, `blocks.with_se`):

* one multi-layer branch (conv/BN/ReLU chains, ending linear; an SE after an activation, or a gate
  after the last conv) plus a shortcut (identity, BN, 1x1 conv [+ BN], average pool then 1x1 conv
  + BN) -> `rm_residual`; a branch that starts with BN + ReLU is a pre-activation block; a shortcut
  that starts with a per-channel scale s and a ReLU on a non-negative fork x reads max(s, 0) * x
  (relu(s * x) = max(s, 0) * x for x >= 0: the authors' pruning network's mask on the shortcut);
* single linear layers (RepVGG's parallel branches, an identity BN) -> `fuse_branches`.

An average pool inside an operand (window == stride, unpadded: anti-aliasing) composes into the conv after it
(`rules.after_avg_pool`), so the reserved channels bypass it; exact at multiples of its window, which the
block's `InputSizeCheck` enforces.

A concatenation of one-layer paths and channel slices of its fork (RM-RepVGG's kept channels, a
DenseNet layer) becomes one layer whose Dirac rows carry the slices.

The activation after the add folds into the merging conv as after any conv (the walker's peephole).
Everything else is refused naming the graph node and the reason.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .blocks import bn_shortcut, preact_residual, total_stride, with_se
from .deploy import InputSizeCheck, SqueezeExcite
from .layer import BNParams, ConvLayer, identity_slopes, relu_slopes
from .ops import ConversionError, dirac, embed_kernel, kernel_center, to_dense
from .rules import after_avg_pool, avg_pool_window, fuse_branches, rm_residual
from .walker import ChannelScale, Context, Item, append_item, is_leaf, register_graph_pass, unsupported

_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__iadd__"}
_RELUS = {F.relu, torch.relu, torch.relu_, "relu", "relu_"}
_CATS = {torch.cat, torch.concat}
_NO_OPS = {F.dropout, "contiguous"}   # dropout: a no-op in eval mode (its `training` argument is traced as False)


@dataclass
class Step:
    """One leaf (`module`), or one add or concatenation (`node`'s target) of `terms`, each a list of steps
    from the fork."""

    node: fx.Node
    module: nn.Module | None = None
    terms: list[list[Step]] | None = None


@dataclass
class Path:
    """`steps` applied to the value of node `fork`, covering `uses` of the fork's uses."""

    fork: fx.Node
    steps: list[Step] = field(default_factory=list)
    uses: int = 1


@dataclass
class PartialSum:
    """An add that has not yet summed every use of its fork (RepVGG: dense + 1x1, then + identity)."""

    node: fx.Node
    fork: fx.Node
    terms: list[list[Step]]
    uses: int

    def as_path(self) -> Path:
        """Read by anything but another add: a path from the fork (a concatenation may use the rest)."""
        return Path(self.fork, [Step(self.node, terms=self.terms)], self.uses)


class ChannelSlice(nn.Module):
    """x[:, start:stop] of the fork (RM-RepVGG's kept channels and identity branch); stop None: the end."""

    def __init__(self, start: int, stop: int | None):
        super().__init__()
        self.start, self.stop = start, stop


class _Tracer(fx.Tracer):
    def __init__(self, ctx: Context):
        super().__init__()
        self.ctx = ctx

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_leaf(m, self.ctx)


@register_graph_pass
def convert_graph(module: nn.Module, ctx: Context) -> list[Item]:
    """The items of `module`, derived from its traced forward."""
    tracer = _Tracer(ctx)
    try:
        graph = tracer.trace(module)
    except Exception as e:  # fx raises TraceError, TypeError, ... for control flow on tensor values
        inner = [name for name in tracer.module_stack if name]   # the module whose forward failed, innermost last
        raise _unsupported_in(ctx, module, inner[-1] if inner else "",
                              f"torch.fx cannot trace its forward ({type(e).__name__}: {e}); register a converter "
                              f"for it or make its forward free of data-dependent control flow".replace("\n", " "),
                              ) from None
    _flatten_views(graph)
    values: dict[fx.Node, Path | PartialSum] = {}
    for node in graph.nodes:
        if node.op == "output":
            path = _operand(node.args[0], values, ctx, module, node)
            if path.fork.op != "placeholder" or path.uses != _uses(path.fork):
                raise _refuse(ctx, module, node, "its output does not follow from the input by one chain")
            return _with_size_check(_items(path.steps, ctx))
        if node.op == "placeholder":
            if values:
                raise _refuse(ctx, module, node, "a plain chain has one input")
            values[node] = Path(node, uses=_uses(node))   # the input itself: all its uses
        else:
            values[node] = _value(node, values, ctx, module, tracer.root)
    raise _refuse(ctx, module, None, "its graph has no output")


def _flatten_views(graph: fx.Graph) -> None:
    """`x.view(x.size(0), -1)` (and reshape), the classic flatten before a classifier: torch.flatten(x, 1)."""
    for node in list(graph.nodes):
        if node.op != "call_method" or node.target not in ("view", "reshape") or len(node.args) != 3:
            continue
        x, size, rest = node.args
        if rest == -1 and isinstance(size, fx.Node) and size.op == "call_method" and size.target == "size" \
                and size.args == (x, 0) and len(size.users) == 1:
            with graph.inserting_before(node):
                flat = graph.call_function(torch.flatten, (x, 1))
            node.replace_all_uses_with(flat)
            graph.erase_node(node)
            graph.erase_node(size)


def _refuse(ctx: Context, module: nn.Module, node: fx.Node | None, reason: str) -> ConversionError:
    if node is None:
        return unsupported(ctx, module, reason)
    where = f"graph node {node.name!r} ({node.op} {_target_name(node)}): "
    return _unsupported_in(ctx, module, _owner(node), where + reason)


def _owner(node: fx.Node) -> str:
    """The qualified name of the innermost module whose forward made `node` ("": the traced module's own)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack)[-1] if stack else ""


def _unsupported_in(ctx: Context, root: nn.Module, qualname: str, reason: str) -> ConversionError:
    """The refusal naming submodule `qualname` of the traced `root` (its position and class)."""
    if not qualname:
        return unsupported(ctx, root, reason)
    ctx.path.append(qualname)
    try:
        return unsupported(ctx, root.get_submodule(qualname), reason)
    finally:
        ctx.path.pop()


def _target_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _operand(arg, values: dict, ctx: Context, module: nn.Module, node: fx.Node) -> Path | PartialSum:
    if not isinstance(arg, fx.Node) or arg not in values:
        raise _refuse(ctx, module, node, f"its input {arg!r} is not a tensor computed from the model input")
    value = values[arg]
    if isinstance(value, PartialSum):
        return value if node.target in _ADDS else value.as_path()
    return Path(arg) if _uses(arg) > 1 else value


def _uses(node: fx.Node) -> int:
    return sum(1 for user in node.users for a in _flat(user) if a is node)


def _flat(node: fx.Node) -> list:
    out = []
    for a in (*node.args, *node.kwargs.values()):
        out += list(a) if isinstance(a, (list, tuple)) else [a]
    return out


def _value(node: fx.Node, values: dict, ctx: Context, module: nn.Module, root: nn.Module) -> Path | PartialSum:
    tensors = [a for a in _flat(node) if isinstance(a, fx.Node)]
    if node.op == "get_attr":
        raise _refuse(ctx, module, node, "it reads a parameter or buffer directly, outside a module RM can convert")
    if node.op in ("call_function", "call_method") and node.target in (*_ADDS, *_CATS):
        return _combine(node, [_operand(a, values, ctx, module, node) for a in tensors], values, ctx, module)
    if len(tensors) != 1:
        raise _refuse(ctx, module, node, _why_op(node, len(tensors)))
    leaf = root.get_submodule(node.target) if node.op == "call_module" else _function_module(node)
    if leaf is None:
        raise _refuse(ctx, module, node, _why_op(node, 1))
    src = _operand(tensors[0], values, ctx, module, node)
    if isinstance(leaf, ChannelSlice) and src.steps:
        raise _refuse(ctx, module, node, "RM carries channel slices of a block's input only (RM-RepVGG's kept "
                                         "channels), not of a computed branch")
    return Path(src.fork, [*src.steps, Step(node, module=leaf)], src.uses)


def _channel_slice(index) -> ChannelSlice | None:
    if not (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
            and isinstance(index[1], slice) and index[1].step in (None, 1)):
        return None
    start, stop = index[1].start or 0, index[1].stop
    if not isinstance(start, int) or start < 0 or not (stop is None or isinstance(stop, int) and stop > start):
        return None
    return ChannelSlice(start, stop)


def _why_op(node: fx.Node, tensors: int) -> str:
    name = _target_name(node)
    if name in ("split", "chunk", "tensor_split"):
        return ("a channel split whose parts take different chains (Res2Net's hierarchical 3x3s, SK's branches): "
                "RM carries one tensor from layer to layer and would need a layer per part with Dirac rows for "
                "the others, which this pass does not build; register a converter for the block")
    if name == "cat":
        return ("a concatenation RM cannot carry: the plain chain is one tensor from layer to layer, and the "
                "parts concatenated here are computed by different chains")
    if tensors != 1:
        return f"{name} combines {tensors} tensors; only the add of a residual or of parallel branches is convertible"
    return f"{name} has no plain-chain module (conv, BN, ReLU/PReLU, pooling, Flatten, Linear, SqueezeExcite)"


def _function_module(node: fx.Node) -> nn.Module | None:
    """The module a function node computes, or None if it has none (an Identity for a no-op)."""
    target, args, kwargs = node.target, node.args[1:], node.kwargs
    if target in _RELUS:
        return nn.ReLU()
    if target in _NO_OPS:
        return nn.Identity()
    if target in (torch.flatten, "flatten"):
        return nn.Flatten(*args, **kwargs) if args or kwargs else nn.Flatten(0)
    if target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d) and len(args) == 1:
        return (nn.AdaptiveAvgPool2d if target is F.adaptive_avg_pool2d else nn.AdaptiveMaxPool2d)(args[0])
    if target is operator.getitem:
        return _channel_slice(args[0])
    if target == "mean":
        dims = args[0] if args else kwargs.get("dim")
        if isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]:
            keepdim = kwargs.get("keepdim", args[1] if len(args) > 1 else False)
            pool = nn.AdaptiveAvgPool2d(1)
            return pool if keepdim else nn.Sequential(pool, nn.Flatten(1))
    return None


def _combine(node: fx.Node, operands: list, values: dict, ctx: Context, module: nn.Module) -> Path | PartialSum:
    """An add or a concatenation of paths from one fork: one step after the fork's own path once every use
    of the fork is in it (an add that is not there yet is a `PartialSum`)."""
    forks = {op.fork for op in operands}
    is_add = node.target in _ADDS
    if len(forks) != 1 or (is_add and len(operands) != 2):
        raise _refuse(ctx, module, node, f"an {'add' if is_add else 'concatenation'} RM can convert combines paths "
                                         f"that start at one tensor (a residual branch and its shortcut, or parallel "
                                         f"branches); these operands do not")
    fork = forks.pop()
    terms = [t for op in operands for t in (op.terms if isinstance(op, PartialSum) else [op.steps])]
    uses = sum(op.uses for op in operands)
    if uses < _uses(fork):
        if is_add:
            return PartialSum(node, fork, terms, uses)
        raise _refuse(ctx, module, node, "a concatenation RM cannot carry: its parts do not use every use of the "
                                         "tensor they start from, so the plain chain could not hold the rest")
    start = values[fork]
    if isinstance(start, PartialSum):
        start = start.as_path()
    return Path(start.fork, [*start.steps, Step(node, terms=terms)], start.uses)


def _items(steps: list[Step], ctx: Context) -> list[Item]:
    items: list[Item] = []
    for item in _raw_items(steps, ctx):
        if isinstance(item, ChannelSlice):
            raise ConversionError(f"a channel slice in {'.'.join(ctx.path)} drops channels outside a concatenation "
                                  f"or an add; the plain chain keeps every channel it carries")
        append_item(items, item, ctx)
    return items


def _raw_items(steps: list[Step], ctx: Context) -> list[Item]:
    """The items of `steps` before the peephole folds them (a term's head is read before folding)."""
    raw: list[Item] = []
    for step in steps:
        if isinstance(step.module, ChannelSlice):
            raw.append(step.module)   # read by the add or concatenation it starts an operand of
        elif step.terms is None:
            name = step.node.target if step.node.op == "call_module" else step.node.name
            raw += ctx.convert(step.module, name)
        else:
            owner = _owner(step.node)
            where = f"graph node {step.node.name!r} of {'.'.join([*ctx.path, owner] if owner else ctx.path)}"
            raw += (_cat_items if step.node.target in _CATS else _add_items)(step.terms, ctx, where)
    return raw


@dataclass
class _Term:
    """One operand of an add: [average pool ->] [BN + ReLU | scale + ReLU ->] layers (with SE gates) from
    the fork."""

    layers: list[ConvLayer]
    gates: list[tuple[int, SqueezeExcite]]  # (index of the layer the gate follows, gate)
    bn_only: BNParams | None = None         # the operand is BN(fork[:, offset:])
    offset: int = 0
    preact: BNParams | None = None          # the operand starts with ReLU(BN(fork))
    pool: int = 1                           # the operand starts with an average pool of this window
    input_scale: torch.Tensor | None = None  # the operand starts with ReLU(s * fork), fork >= 0: max(s, 0)
    pool_inside: bool = False               # an average pool between its convs, composed into the next one

    @property
    def simple(self) -> bool:
        """At most one linear layer, no gate: a shortcut, or a branch RepVGG fusion sums."""
        return (not self.gates and self.preact is None and len(self.layers) <= 1
                and all(layer.act is None for layer in self.layers))


def _term(steps: list[Step], ctx: Context, where: str) -> _Term:
    nonneg = ctx.nonneg   # of the fork (reading the items moves it on)
    raw = _raw_items(steps, ctx)
    pool = 1
    if raw and isinstance(raw[0], nn.AvgPool2d):
        pool = _pool_window(raw.pop(0), where)
    input_scale = None
    if len(raw) >= 2 and isinstance(raw[0], ChannelScale) and isinstance(raw[1], nn.ReLU):
        if not nonneg:
            raise ConversionError(f"a residual operand at {where} starts with relu(scale * x), a per-channel scale "
                                  f"only on a non-negative x; the block must follow a ReLU")
        input_scale, raw = raw[0].scale.clamp(min=0), raw[2:]
    offset = raw.pop(0).start if raw and isinstance(raw[0], ChannelSlice) and len(raw) == 2 else 0
    if len(raw) == 1 and isinstance(raw[0], nn.BatchNorm2d) and pool == 1:
        return _Term([], [], bn_only=BNParams.from_module(raw[0]), offset=offset, input_scale=input_scale)
    preact = None
    if len(raw) > 2 and isinstance(raw[0], nn.BatchNorm2d) and isinstance(raw[1], nn.ReLU):
        preact, raw = BNParams.from_module(raw[0]), raw[2:]
    items: list[Item] = []
    for item in raw:
        append_item(items, item, ctx)
    items, pool_inside = _compose_pools(items, where)
    layers, gates, odd = [], [], []
    for i, item in enumerate(items):
        if isinstance(item, ConvLayer):
            layers.append(item)
        elif isinstance(item, SqueezeExcite) and i > 0 and isinstance(items[i - 1], ConvLayer):
            gates.append((len(layers) - 1, item))
        else:
            odd.append(type(item).__name__)
    if odd:
        raise ConversionError(f"a residual operand at {where} holds {', '.join(odd)} between its "
                              f"convs; RM carries the shortcut through conv, BN, ReLU/PReLU and SE gates only")
    return _Term(layers, gates, preact=preact, pool=pool, input_scale=input_scale, pool_inside=pool_inside)


def _compose_pools(items: list[Item], where: str) -> tuple[list[Item], bool]:
    """Each average pool before a conv composed into it (anti-aliased ResNet-D, CLIP ResNets), so the reserved
    channels bypass it; and whether there was one (exact at multiples of the pool's window only)."""
    out: list[Item] = []
    for item in items:
        if isinstance(item, ConvLayer) and out and isinstance(out[-1], nn.AvgPool2d):
            composed = after_avg_pool(item, _pool_window(out[-1], where))
            if composed is not None:
                out[-1] = composed
                continue
        out.append(item)
    return out, len(out) < len(items)


def _pool_window(pool: nn.AvgPool2d, where: str) -> int:
    window = avg_pool_window(pool)
    if window is None:
        raise ConversionError(f"the average pool at {where} ({pool}) has a window other than its "
                              f"stride or a padding: its divisor varies at the border, which no conv reproduces")
    return window


def _add_items(term_steps: list[list[Step]], ctx: Context, where: str) -> list[Item]:
    before = ctx.nonneg
    terms = []
    for steps in term_steps:
        ctx.nonneg = before
        terms.append(_term(steps, ctx, where))
    ctx.nonneg = before
    if all(t.simple and t.pool == 1 and t.input_scale is None for t in terms):
        items = [_fuse(terms, where)]
    else:
        branches = [t for t in terms if not t.simple]
        if len(terms) != 2 or len(branches) != 1:
            raise ConversionError(f"the add at {where} sums {len(branches)} multi-layer branches and "
                                  f"{len(terms) - len(branches)} shortcuts; RM merges one branch with one shortcut")
        shortcut = next(t for t in terms if t.simple)
        if branches[0].input_scale is not None:
            raise ConversionError(f"the residual branch at {where} starts with relu(scale * x); RM scales the "
                                  f"reserved shortcut input, not the branch's")
        items = _residual(branches[0], shortcut, ctx, where)
    if any(t.pool_inside for t in terms):
        items = [_PooledShortcut(), *items]   # its size check covers the composed pools too
    return items


def _shortcut_layer(term: _Term) -> ConvLayer | None:
    if term.bn_only is not None:
        return bn_shortcut(term.bn_only)
    return term.layers[0] if term.layers else None


def _fuse(terms: list[_Term], where: str) -> ConvLayer:
    """Parallel linear layers and at most one identity (BN) summed: RepVGG's re-parameterisation."""
    convs = [t.layers[0] for t in terms if t.layers]
    identities = [t for t in terms if not t.layers]
    if len(identities) > 1 or not convs:
        raise ConversionError(f"the add at {where} sums the same tensor twice: there is no branch to fuse it into")
    identity = None
    if identities:
        c = convs[0].out_channels
        identity = identities[0].bn_only or BNParams.identity(c, eps=0.0)
        return fuse_branches(convs, identity, identities[0].offset)
    return fuse_branches(convs)


def _residual(branch: _Term, shortcut: _Term, ctx: Context, where: str) -> list[Item]:
    main = branch.layers
    if branch.preact is not None and (shortcut.pool != 1 or shortcut.input_scale is not None):
        raise ConversionError(f"a pre-activation block at {where} with an average-pool or scaled shortcut")
    gate_last = [g for i, g in branch.gates if i == len(main) - 1]
    try:
        if branch.preact is not None:
            marker, *chain = preact_residual(main, _shortcut_layer(shortcut), branch.preact)
            return [marker, *with_se(chain, _one(branch.gates, where), len(main) - 2)]
        chain = rm_residual(main, _shortcut_layer(shortcut), None, ctx.nonneg, ctx.downsample, shortcut.pool,
                            gate=bool(gate_last), input_scale=shortcut.input_scale)
    except ConversionError as e:
        raise ConversionError(f"the residual add at {where}: {e}") from None
    if gate_last:
        chain = with_se(chain, gate_last[0], len(chain) - 2)
    else:
        chain = with_se(chain, _one(branch.gates, where), len(main) - 2)
    if shortcut.pool != 1:
        return [_PooledShortcut(), *chain]
    return chain


def _one(gates: list[tuple[int, SqueezeExcite]], where: str) -> SqueezeExcite | None:
    if len(gates) > 1:
        raise ConversionError(f"a residual branch at {where} has {len(gates)} SE gates; RM keeps one")
    return gates[0][1] if gates else None


class _PooledShortcut(nn.Identity):
    """Marks a block whose average-pool shortcut is exact only at some input sizes (removed by
    `_with_size_check`, which puts an `InputSizeCheck` first)."""


def _with_size_check(items: list[Item]) -> list[Item]:
    """Replace the markers of average-pool shortcuts by one `InputSizeCheck` for multiples of the total stride."""
    if not any(isinstance(item, _PooledShortcut) for item in items):
        return items
    items = [item for item in items if not isinstance(item, _PooledShortcut)]
    return [InputSizeCheck(total_stride(items)), *items]


def _cat_items(parts: list[list[Step]], ctx: Context, where: str) -> list[Item]:
    """A concatenation of one-layer paths and channel slices of the fork: one layer whose output rows
    stack theirs (RM-RepVGG: the kept channels as Dirac filters beside the fused RepVGG layer). A slice
    rides through ReLU where the fork is non-negative, else through PReLU slope 1."""
    before = ctx.nonneg
    rows: list[ConvLayer | ChannelSlice] = []
    for steps in parts:
        ctx.nonneg = before
        raw = _raw_items(steps, ctx)
        items: list[Item] = [] if raw else [ChannelSlice(0, None)]   # the fork itself (DenseNet-style)
        for item in raw:
            append_item(items, item, ctx)
        if len(items) != 1 or not isinstance(items[0], (ConvLayer, ChannelSlice)):
            raise ConversionError(f"a concatenation RM cannot carry at {where}: each part must be one "
                                  f"conv layer or a channel slice of the block input, one part is "
                                  f"{', '.join(type(i).__name__ for i in items)}")
        rows.append(items[0])
    layers = [r.fold_bn() for r in rows if isinstance(r, ConvLayer)]
    if not layers or len({(r.stride, r.dilation, r.in_channels) for r in layers}) != 1:
        raise ConversionError(f"a concatenation RM cannot carry at {where}: its conv parts differ in "
                              f"input, stride or dilation, or there is none")
    big = max(layers, key=lambda layer: layer.kernel[0] * layer.kernel[1])
    center, c_in = kernel_center(big), big.in_channels
    weights, biases, acts = [], [], []
    for row in rows:
        if isinstance(row, ChannelSlice):
            n = (row.stop if row.stop is not None else c_in) - row.start
            weights.append(dirac(n, big.kernel, center, in_channels=c_in, in_offset=row.start))
            biases.append(torch.zeros(n, dtype=torch.float64))
            acts.append(relu_slopes(n) if before else identity_slopes(n))
            continue
        layer = row.fold_bn()
        weights.append(embed_kernel(to_dense(layer.weight, layer.groups), big.kernel, kernel_center(layer)))
        biases.append(layer.bias)
        acts.append(layer.act if layer.act is not None else identity_slopes(layer.out_channels))
    ctx.nonneg = before
    return [ConvLayer(torch.cat(weights), torch.cat(biases), big.stride, big.padding, big.dilation, 1, None,
                      torch.cat(acts))]
