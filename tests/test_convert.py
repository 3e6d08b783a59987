"""The converter's contract: exact outputs, a plain chain, the input model untouched."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

import models
import rm
from models.complexity import count_macs, count_params
from models.repvgg import RepVGG
from models.resnet import ResNet
from models.rmnet import RMNet
from tests.helpers import FLOAT32_TOL, check_exact, randomize_bn

SMALL = {
    "resnet_basic": lambda stem: ResNet(BasicBlock, [1, 2, 1, 1], num_classes=5, stem=stem, widths=(8, 16, 32, 64)),
    "resnet_bottleneck": lambda stem: ResNet(Bottleneck, [2, 1, 1, 1], num_classes=5, stem=stem, widths=(8, 16, 16, 16)),
    "resnext": lambda stem: ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5, stem=stem, widths=(16, 16, 32, 32),
                                   groups=4, width_per_group=16),
    "rmnet": lambda stem: RMNet([1, 2, 1, 1], 3, 4, num_classes=5, stem=stem, widths=(8, 16, 32, 64)),
    "repvgg_grouped": lambda stem: RepVGG([1, 2, 2, 1], [8, 16, 32, 64], 5, stem, groups_at={2: 2, 4: 4}),
    "rmrepvgg": lambda stem: RepVGG([3, 3, 5, 3], [8, 16, 32, 64], 5, stem, rm_ratio=0.5),
}


@pytest.mark.parametrize("downsample", rm.rules.SCHEMES)
@pytest.mark.parametrize("fuse_bn", [True, False])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("family", sorted(SMALL))
def test_small_families_convert_exactly(family, stem, fuse_bn, downsample):
    model = randomize_bn(SMALL[family](stem), seed=sorted(SMALL).index(family))
    check_exact(model, 32 if stem == "cifar" else 64, fuse_bn=fuse_bn, downsample=downsample)


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "rmnet26x3_32", "repvgg_a0", "rmrepvgg21"])
def test_registered_models_convert_exactly(name):
    model = randomize_bn(models.create_model(name, num_classes=10, stem="cifar"), seed=1)
    check_exact(model, 32, batch=1)


@pytest.mark.parametrize("ctor", [torchvision.models.resnet18, torchvision.models.resnet50])
def test_torchvision_resnets_convert_directly(ctor):
    model = randomize_bn(ctor(num_classes=10), seed=3, gamma_scale=0.5)
    plain = rm.convert(model)
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    assert (plain(x) - ref).abs().max() / ref.abs().max() < FLOAT32_TOL


def test_plain_chain_has_only_plain_modules():
    model = randomize_bn(SMALL["rmnet"]("imagenet"))
    allowed = (nn.Conv2d, nn.ReLU, nn.PReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)
    fused = rm.convert(model)
    assert isinstance(fused, nn.Sequential)
    assert all(isinstance(m, allowed) for m in fused)
    assert all(m.bias is not None for m in fused if isinstance(m, nn.Conv2d))
    kept = rm.convert(model, fuse_bn=False)
    layers = list(kept)
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.BatchNorm2d)
    assert sum(isinstance(m, nn.Conv2d) for m in kept) == sum(isinstance(m, nn.Conv2d) for m in fused)


def test_input_model_is_not_modified():
    model = randomize_bn(SMALL["resnet_basic"]("cifar"))
    before = copy.deepcopy(model.state_dict())
    rm.convert(model)
    rm.convert(model, fuse_bn=False, downsample="reserve_shortcut")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_training_mode_is_refused():
    with pytest.raises(rm.ConversionError, match="eval"):
        rm.convert(SMALL["rmnet"]("cifar").train())


def test_unknown_module_is_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU()).eval()
    with pytest.raises(rm.ConversionError, match="GELU"):
        rm.convert(model)


def test_rmnet26_deploy_structure_is_paper_table4():
    model = models.create_model("rmnet26x3_32", num_classes=10, stem="cifar").eval()
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.groups)
             for m in rm.convert(model) if isinstance(m, nn.Conv2d)]
    assert convs[:4] == [(3, 64, 3, 1, 1), (64, 192, 1, 1, 1), (192, 192, 3, 1, 6), (192, 64, 1, 1, 1)]
    assert convs[7:10] == [(64, 320, 1, 1, 1), (320, 320, 3, 2, 5), (320, 128, 1, 1, 1)]
    assert convs[-3:] == [(512, 1536, 1, 1, 1), (1536, 1536, 3, 1, 6), (1536, 512, 1, 1, 1)]
    assert len(convs) == 25


@pytest.mark.parametrize("scheme,expected", [("reserve_input", 81), ("reserve_shortcut", 108)])
def test_downsample_scheme_parameter_counts(scheme, expected):
    """Paper §3.2: scheme 2 (Fig. 2b) costs 81 C^2 weights, scheme 1 (Fig. 2a) 108 C^2 + 4C PReLU."""
    c = 8
    block = BasicBlock(c, 2 * c, 2, nn.Sequential(nn.Conv2d(c, 2 * c, 1, 2, bias=False), nn.BatchNorm2d(2 * c)))
    net = randomize_bn(nn.Sequential(nn.ReLU(), block))
    plain = rm.convert(net, downsample=scheme)
    weights = sum(m.weight.numel() for m in plain if isinstance(m, nn.Conv2d))
    prelu = sum(m.weight.numel() for m in plain if isinstance(m, nn.PReLU))
    assert weights == expected * c * c
    assert prelu == (4 * c if scheme == "reserve_shortcut" else 0)
    x = torch.randn(2, c, 16, 16)
    torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-5)


def test_signed_block_input_uses_prelu_identity():
    """Without a ReLU before the block, the reserved channels may be negative: PReLU slope 1."""
    block = randomize_bn(nn.Sequential(BasicBlock(8, 8)))
    plain = rm.convert(block)
    prelus = [m for m in plain if isinstance(m, nn.PReLU)]
    assert len(prelus) == 1 and prelus[0].weight[8:].eq(1).all() and prelus[0].weight[:8].eq(0).all()
    x = torch.randn(2, 8, 8, 8)
    assert (x < 0).any()
    torch.testing.assert_close(plain(x), block(x), rtol=1e-5, atol=1e-5)


def test_conversion_on_meta_device_gives_deploy_counts():
    with torch.device("meta"):
        model = models.create_model("rmnet50x6_32").eval()
    plain = rm.convert(model)
    assert count_params(plain) / 1e6 == pytest.approx(47.58, rel=5e-3)
    assert count_macs(plain, 224) / 1e9 == pytest.approx(8.26, rel=5e-3)
