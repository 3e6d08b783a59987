"""The graph-level RM pass (rm/graph.py): user-defined residual blocks with no registered converter,
the same plain model as the registered converters on every registry model, refusals that name the
graph node and the reason, and timm families that have no converter."""
import os
import re

import pytest
import torch
import torch.nn as nn

import models
import rm
from models.rmnet_pruning import ChannelMask
from tests.helpers import FLOAT64_TOL, ROOT, check_exact, randomize_bn

PLAIN = (nn.Conv2d, nn.ReLU, nn.PReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
         nn.Linear, rm.SqueezeExcite, rm.deploy.InputSizeCheck)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny convs on a busy machine: one thread is many times faster than two."""


def _doc_code() -> str:
    """The python block of the guide's section on blocks of one's own."""
    with open(os.path.join(ROOT, "docs", "bring-your-own-model.md")) as f:
        section = f.read().split("## Your own residual blocks", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_bring_your_own_example_converts_exactly(capsys):
    """Exactly the code of the guide runs, and its model converts exactly with random BN statistics."""
    namespace: dict = {}
    exec(compile(_doc_code(), "bring-your-own-model.md", "exec"), namespace)
    assert "max abs difference" in capsys.readouterr().out
    plain = namespace["plain"]
    assert all(isinstance(m, PLAIN) for m in plain)
    check_exact(randomize_bn(namespace["model"], seed=3), 32)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def _mask(c: int) -> ChannelMask:
    """A trained per-channel scale: negative, zero and positive entries."""
    mask = ChannelMask(c)
    with torch.no_grad():
        mask.weight.copy_(torch.linspace(-0.5, 1.5, c).view(-1, 1, 1, 1))
        mask.weight[c // 4] = 0.0
    return mask


class Basic(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut (identity, BN alone, or 1x1 conv + BN, these two optionally reading
    relu(mask * x)), ReLU; the add in three spellings."""

    def __init__(self, cin: int, cout: int, stride: int = 1, add: str = "+", shortcut: str = "auto"):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _bn(cout)
        self.add = add
        if shortcut == "bn":
            self.short = _bn(cout)
        elif shortcut == "mask":   # relu(mask * x) on x >= 0: max(mask, 0) * x, then BN or 1x1 conv + BN
            proj = [nn.Conv2d(cin, cout, 1, stride, bias=False)] if stride != 1 or cin != cout else []
            self.short = nn.Sequential(_mask(cin), nn.ReLU(), *proj, _bn(cout))
        elif shortcut == "pool":   # ResNet-D: 2x2 average pool, then 1x1 conv + BN
            self.short = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                                       nn.Conv2d(cin, cout, 1, bias=False), _bn(cout))
        elif stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))
        else:
            self.short = None

    def forward(self, x):
        out = self.bn2(self.conv2(torch.nn.functional.relu(self.bn1(self.conv1(x)))))
        s = x if self.short is None else self.short(x)
        if self.add == "+=":
            out += s
        elif self.add == "torch.add":
            out = torch.add(out, s)
        else:
            out = out + s
        return torch.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> [SE] -> 1x1, projection shortcut, ReLU after the add."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, se: bool = False, groups: int = 1):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), _bn(mid), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False), _bn(mid), nn.ReLU())
        self.se = rm.SqueezeExcite(mid, 4) if se else nn.Identity()
        self.c3 = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), _bn(cout))
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return nn.functional.relu(self.c3(self.se(self.c2(self.c1(x)))) + self.proj(x))


class PreAct(nn.Module):
    """BN-ReLU before the fork (projection) or in the branch (identity shortcut); nothing after the add."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = _bn(cin)
        self.conv1, self.bn2 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        a = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(a))))
        return out + (x if self.proj is None else self.proj(a))


class Net(nn.Module):
    """A stem, the blocks and a head, with a forward of its own (the pass derives the order)."""

    def __init__(self, *blocks: nn.Module, width: int = 8, preact_head: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), _bn(8), nn.ReLU())
        self.blocks = nn.ModuleList(blocks)
        self.head_bn = nn.Sequential(_bn(width), nn.ReLU()) if preact_head else nn.Identity()
        self.fc = nn.Linear(width, 5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = nn.functional.adaptive_avg_pool2d(self.head_bn(x), 1)
        return self.fc(x.view(x.size(0), -1))   # the flatten of many CIFAR ResNets


USER_MODELS = {
    "basic +": lambda: Net(Basic(8, 8), Basic(8, 16, 2), width=16),
    "basic +=": lambda: Net(Basic(8, 8, add="+="), Basic(8, 16, 2, add="+="), width=16),
    "basic torch.add": lambda: Net(Basic(8, 8, add="torch.add"), Basic(8, 16, 2, add="torch.add"), width=16),
    "BN shortcut": lambda: Net(Basic(8, 8, shortcut="bn")),
    "masked shortcut": lambda: Net(Basic(8, 8, shortcut="mask"), Basic(8, 16, 2, shortcut="mask"), width=16),
    "bottleneck": lambda: Net(Bottleneck(8, 4, 16, 2), Bottleneck(16, 8, 16, groups=2), width=16),
    "bottleneck SE": lambda: Net(Bottleneck(8, 8, 16, 2, se=True), Bottleneck(16, 8, 16, se=True), width=16),
    "pre-activation": lambda: Net(PreAct(8, 8), PreAct(8, 16, 2), PreAct(16, 16), width=16, preact_head=True),
    "average-pool shortcut": lambda: Net(Basic(8, 16, 2, shortcut="pool"), width=16),
}


@pytest.mark.parametrize("fuse_bn,downsample", [(True, "reserve_input"), (True, "reserve_shortcut"),
                                                (False, "reserve_input")])
@pytest.mark.parametrize("name", sorted(USER_MODELS))
def test_user_blocks_convert_exactly_without_registration(name, fuse_bn, downsample):
    torch.manual_seed(0)
    model = randomize_bn(USER_MODELS[name](), seed=len(name))
    check_exact(model, 16, fuse_bn=fuse_bn, downsample=downsample)
    plain = rm.convert(model, fuse_bn=fuse_bn, downsample=downsample)
    assert all(isinstance(m, PLAIN + (nn.BatchNorm2d,) * (not fuse_bn)) for m in plain)


def test_an_average_pool_shortcut_records_the_sizes_it_is_exact_for():
    """ceil_mode + count_include_pad=False: a partial border window at odd sizes. The plain model starts with
    an InputSizeCheck and refuses those sizes in one line instead of answering wrongly."""
    model = randomize_bn(USER_MODELS["average-pool shortcut"](), seed=1).double()
    plain = rm.convert(model)
    assert isinstance(plain[0], rm.deploy.InputSizeCheck) and plain[0].multiple == 2
    x = torch.randn(2, 3, 18, 18, dtype=torch.float64)
    assert (plain(x) - model(x)).abs().max() < FLOAT64_TOL * model(x).abs().max()
    with pytest.raises(ValueError, match="input size 17x17: .*multiples of 2"):
        plain(torch.randn(1, 3, 17, 17, dtype=torch.float64))


def _narrow(name: str) -> nn.Module:
    """Registry model `name` at narrow widths, every block type and depth kept."""
    family, stems = models.model_family(name), models.model_stems(name)
    kw: dict = {"width_mult": 0.125} if family == "mobilenet" else {}
    if family == "rmnet":
        gw = int(name.split("_")[1])   # rmnet{D}x{r}_{group width}: each stage's width a multiple of its group width
        kw["widths"] = (gw, 2 * gw, 4 * gw, 8 * gw)
    elif family != "mobilenet":
        kw["widths"] = (16, 16, 32) if stems == ("cifar",) else (16, 16, 32, 32)
    return models.create_model(name, num_classes=5, stem=stems[-1], **kw)


def _same_plain_model(model: nn.Module, **kwargs) -> None:
    try:
        registered = rm.convert(model, **kwargs)
    except rm.ConversionError as refusal:   # no exact plain form (ReLU6): the pass refuses it at the same layer kind
        with pytest.raises(rm.ConversionError, match="ReLU6"):
            rm.convert(model, use_registered=False, **kwargs)
        assert "ReLU6" in str(refusal)
        return
    derived = rm.convert(model, use_registered=False, **kwargs)
    assert [type(m) for m in registered] == [type(m) for m in derived]
    a, b = registered.state_dict(), derived.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("name", models.list_models())
def test_graph_pass_gives_the_registered_converters_plain_model(name):
    """The model-level order comes from forward (no hand-written lists), and forcing the graph pass on
    blocks that have a converter gives the same plain model: same layers, equal weights."""
    torch.manual_seed(0)
    _same_plain_model(randomize_bn(_narrow(name), seed=2))


# One model per family (the shallowest): kept BatchNorm and the other downsample scheme.
FAMILY_SAMPLE = sorted({models.model_family(n): n for n in sorted(models.list_models(), key=len, reverse=True)}
                       .values())


@pytest.mark.parametrize("name", FAMILY_SAMPLE)
def test_graph_pass_equals_the_converters_with_batchnorm_kept(name):
    torch.manual_seed(0)
    _same_plain_model(randomize_bn(_narrow(name), seed=4), fuse_bn=False, downsample="reserve_shortcut")


class _Branches(nn.Module):
    """A block whose forward is given as a function of its parts (for the refusals)."""

    def __init__(self, forward, **parts: nn.Module):
        super().__init__()
        self._forward = forward
        for name, part in parts.items():
            self.add_module(name, part)

    def forward(self, x):
        return self._forward(self, x)


def _chain(*parts: nn.Module) -> nn.Sequential:
    return nn.Sequential(*parts)


def _cbr(c: int = 8) -> nn.Sequential:
    return _chain(nn.Conv2d(c, c, 3, 1, 1), _bn(c), nn.ReLU())


def _two_forks(self, x):
    y = self.a(x)
    z = self.b(y)
    return torch.relu(self.c(z) + y) + z   # the inner add's operands start at z and at y


def _data_dependent(self, x):
    if x.sum() > 0:   # control flow on a tensor value
        return torch.relu(self.a(x) + x)
    return x


REFUSALS = {
    "SiLU between reserve and merge": (
        _Branches(lambda s, x: torch.relu(s.b(x) + x), b=_chain(nn.Conv2d(8, 8, 3, 1, 1), _bn(8), nn.SiLU(),
                                                                nn.Conv2d(8, 8, 3, 1, 1), _bn(8))),
        r"module Net\.blocks\.0\.b\.2 of type torch\.nn\.modules\.activation\.SiLU: the plain chain's activations"),
    "GroupNorm": (
        _Branches(lambda s, x: torch.relu(s.b(x) + x), b=_chain(nn.Conv2d(8, 8, 3, 1, 1), nn.GroupNorm(2, 8))),
        r"module Net\.blocks\.0\.b\.1 of type torch\.nn\.modules\.normalization\.GroupNorm: it normalises every input"),
    "a concatenation of chains": (
        _Branches(lambda s, x: s.c(torch.cat([s.a(s.b(x)), s.d(x)], 1)), a=_cbr(), b=_cbr(), d=_cbr(),
                  c=_chain(nn.Conv2d(16, 8, 1), nn.ReLU())),
        r"graph node 'cat'|a concatenation RM cannot carry .*one part is ConvLayer, ConvLayer"),
    "an average pool whose divisor varies": (
        _Branches(lambda s, x: torch.relu(s.b(x) + s.s(x)), b=_chain(*_cbr(), nn.Conv2d(8, 8, 3, 2, 1), _bn(8)),
                  s=_chain(nn.AvgPool2d(3, 2, 1), nn.Conv2d(8, 8, 1), _bn(8))),
        r"the average pool .* has a window other than its stride or a padding: its divisor varies"),
    "an add of two branches": (
        _Branches(lambda s, x: torch.relu(s.a(x) + s.b(x)), a=_chain(*_cbr(), nn.Conv2d(8, 8, 1)),
                  b=_chain(*_cbr(), nn.Conv2d(8, 8, 1))),
        r"the add at graph node 'add' of Net\.blocks\.0 sums 2 multi-layer branches and 0 shortcuts"),
    "an add of tensors from different forks": (
        _Branches(_two_forks, a=_cbr(), b=_cbr(), c=_cbr()),
        r"module Net\.blocks\.0 of type .*_Branches: graph node 'add' \(call_function add\): an add RM can convert combines paths that start at one tensor"),
    "data-dependent control flow": (
        _Branches(_data_dependent, a=_cbr()),
        r"module Net\.blocks\.0 of type .*_Branches: torch\.fx cannot trace its forward "
        r"\(TraceError: symbolically traced variables cannot be used as inputs to control flow\)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_graph_node_and_the_reason(case):
    block, message = REFUSALS[case]
    with pytest.raises(rm.ConversionError, match=message) as err:
        rm.convert(randomize_bn(Net(block)))
    assert "\n" not in str(err.value)


def test_a_densenet_concatenation_of_the_input_and_a_layer_converts():
    block = _Branches(lambda s, x: torch.cat([x, s.a(x)], 1), a=_cbr())
    check_exact(randomize_bn(Net(block, width=16), seed=5), 16)


def test_a_conv_subclass_with_its_own_forward_is_refused_not_read_as_a_conv():
    """timm's StdConv2d standardises its weights in forward: reading them as a Conv2d would be silently wrong."""
    class Standardised(nn.Conv2d):
        def forward(self, x):
            w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True))
            return self._conv_forward(x, w, self.bias)

    net = nn.Sequential(Standardised(3, 8, 3), _bn(8), nn.ReLU())
    with pytest.raises(rm.ConversionError, match=r"module Sequential\.0 of type .*Standardised: it computes something "
                                                 r"else than Conv2d"):
        rm.convert(randomize_bn(net))


def _timm(name: str, **kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    if name.startswith("repvgg_"):   # timm's RepVGG: its own re-parameterisation first, then RM
        from timm.utils.model import reparameterize_model
        model = reparameterize_model(model)
    # Half-scale BN statistics keep deep nets well conditioned in float64 (as tests/test_foreign_models.py).
    return randomize_bn(model, 1, gamma_scale=0.5)


NARROW_V2 = {"channels": (16, 32, 64, 128), "stem_chs": 8}
TIMM_CONVERTS = {
    "regnetx_002": {},                 # RegNetX: grouped bottlenecks, 1x1 conv + BN shortcuts
    "regnety_002": {},                 # RegNetY: SE after the grouped 3x3 (timm's SEModule)
    "resnetv2_18": NARROW_V2,          # pre-activation basic blocks, BatchNormAct2d
    "resnetv2_50d": NARROW_V2,         # pre-activation bottlenecks, deep stem, average-pool shortcuts
    "gernet_s": {},                    # ByobNet: basic, bottleneck and depthwise-separable blocks
    "repvgg_a0": {},                   # ByobNet RepVGG after timm's reparameterize_model
}


@pytest.mark.parametrize("name", sorted(TIMM_CONVERTS))
def test_timm_families_without_a_converter_convert_exactly(name):
    model = _timm(name, **TIMM_CONVERTS[name])
    report = rm.verify_conversion(model, input_size=32, dtypes=(torch.float64,))
    assert report["float64"]["max_rel"] < FLOAT64_TOL, report
    plain = rm.convert(model)
    assert all(isinstance(m, PLAIN) for m in plain), sorted({type(m).__name__ for m in plain})
    assert isinstance(plain[0], rm.deploy.InputSizeCheck) == name.endswith("d")


TIMM_REFUSED = {
    "res2net50_26w_4s": r"layer1\.0 of type timm\.models\.res2net\.Bottle2neck: graph node 'split' .*a channel split "
                        r"whose parts take different chains",
    "resnetv2_50x1_bit": r"stem\.conv of type timm\.layers\.std_conv\.StdConv2d: it computes something else than Conv2d",
    "resnet32ts": r"stem\.conv1\.bn\.act of type torch\.nn\.modules\.activation\.SiLU: the plain chain's activations",
    "resnetv2_50d_gn": r"of type timm\.layers\.norm_act\.GroupNormAct: it normalises every input",
}


@pytest.mark.parametrize("name", sorted(TIMM_REFUSED))
def test_timm_families_that_do_not_fit_are_refused_with_the_reason(name):
    with torch.device("meta"):
        model = pytest.importorskip("timm").create_model(name, pretrained=False).eval()
    with pytest.raises(rm.ConversionError, match=TIMM_REFUSED[name]) as err:
        rm.convert(model)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["resnet26t", "resnet50d", "seresnet50", "ecaresnet26t"])
def test_graph_pass_gives_the_timm_resnet_converters_plain_model(name):
    """timm's deep stems, average-pool shortcuts (with the size check), SE and ECA before the add: the pass
    alone gives the plain model of timm's registered block and model converters."""
    _same_plain_model(_timm(name, channels=(16, 32, 64, 128), stem_width=8))


def test_timm_repvgg_training_form_is_fused_by_the_pass():
    """Without timm's reparameterize_model, the add of the 3x3, the 1x1 and the identity BN is RepVGG's fusion:
    one conv per block, as after timm's own re-parameterisation."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("repvgg_a0", pretrained=False, num_classes=10), 1, gamma_scale=0.5)
    report = rm.verify_conversion(model, input_size=32, dtypes=(torch.float64,))
    assert report["float64"]["max_rel"] < FLOAT64_TOL, report
    convs = [m for m in rm.convert(model) if isinstance(m, nn.Conv2d)]
    assert len(convs) == len([m for m in model.modules() if type(m).__name__ == "RepVggBlock"])
