"""Network slimming (issue 7): pruning plain chains and ResNets, exactness of removing dead channels."""
import pytest
import torch
import torch.nn as nn
from torchvision.models.resnet import Bottleneck

import models
import rm
from models.complexity import count_params
from models.resnet import ResNet
from models.rmnet import RMNet
from pruning import PruneError, channel_scores, prune_plain
from pruning.residual import prune_residual
from rm import recalibrate_identity_bn
from tests.helpers import randomize_bn

TOL = 1e-10  # float64 throughout: exactness, not rounding, is under test


def rmnet(shortcut_bn=False):
    return RMNet([1, 2, 1, 1], 3, 4, num_classes=5, stem="cifar", widths=(8, 16, 32, 64), shortcut_bn=shortcut_bn)


def resnet_cifar(shortcut_bn=False):
    return models.create_model("resnet20", num_classes=5, stem="cifar", shortcut_bn=shortcut_bn)


def resnext(shortcut_bn=False):
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5, stem="cifar", widths=(16, 16, 32, 32), groups=4,
                  width_per_group=16, shortcut_bn=shortcut_bn)


def depthwise_chain():
    """MobileNetV1-like: dense -> depthwise -> dense -> grouped -> grouped (adjacent) -> head."""
    layers = []
    for cin, cout, k, g in [(3, 8, 3, 1), (8, 8, 3, 8), (8, 16, 1, 1), (16, 16, 3, 4), (16, 16, 3, 2)]:
        layers += [nn.Conv2d(cin, cout, k, padding=k // 2, groups=g, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


FAMILIES = {"rmnet": rmnet, "resnet_cifar": resnet_cifar, "resnext": resnext}


def plain_of(ctor, seed=0):
    if ctor is depthwise_chain:
        return randomize_bn(ctor(), seed).double()
    model = randomize_bn(ctor(shortcut_bn=True), seed).double()
    return randomize_bn(rm.convert(model, fuse_bn=False, downsample="reserve_shortcut"), seed).double()


def kill(model, fraction=0.4, seed=1, zero_shift=True):
    """Zero the BN scale (and shift) of a random `fraction` of every BN's channels."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            dead = torch.rand(m.num_features, generator=g) < fraction
            with torch.no_grad():
                m.weight[dead] = 0
                if zero_shift:
                    m.bias[dead] = 0
    return model


def max_err(a, b, size=32):
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = a(x)
        return ((b(x) - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("family", [*FAMILIES, "depthwise"])
def test_plain_threshold_zero_removes_nothing(family):
    plain = plain_of(FAMILIES.get(family, depthwise_chain))
    result = prune_plain(plain, threshold=0.0)
    assert result.removed == 0
    assert count_params(result.model) == count_params(plain)
    assert max_err(plain, result.model) == 0.0


@pytest.mark.parametrize("family", [*FAMILIES, "depthwise"])
def test_plain_dead_channels_are_removed_exactly(family):
    plain = kill(plain_of(FAMILIES.get(family, depthwise_chain)))
    result = prune_plain(plain, threshold=1e-12)
    assert result.removed > 0.05 * result.total  # grouped convs keep equal-sized groups
    assert count_params(result.model) < 0.95 * count_params(plain)
    assert result.approximate == 0
    assert max_err(plain, result.model) < TOL


def test_grouped_structure_stays_valid():
    plain = kill(plain_of(depthwise_chain), fraction=0.5)
    pruned = prune_plain(plain, threshold=1e-12).model
    convs = [m for m in pruned if isinstance(m, nn.Conv2d)]
    # The depthwise conv lost whole groups (and the dense conv before it the matching filters).
    assert convs[1].groups == convs[1].in_channels == convs[1].out_channels < 8
    assert convs[0].out_channels == convs[1].in_channels
    # Between two grouped convs nothing is removed; the others keep equal-sized groups.
    assert convs[3].out_channels == convs[4].in_channels == 16
    assert convs[3].in_channels % convs[3].groups == 0


def test_constant_of_dead_channel_is_folded():
    """A zero-scale channel with a positive shift outputs a constant: removing it is exact when the
    next conv has no padding (the constant moves into that BN), approximate across zero padding."""
    def chain(k):
        return randomize_bn(nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 6, k, padding=k // 2, bias=False), nn.BatchNorm2d(6), nn.PReLU(6),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))).double()
    for k, exact in [(1, True), (3, False)]:
        model = chain(k)
        with torch.no_grad():
            for bn in (model[1], model[4]):
                bn.weight[:2] = 0
                bn.bias[:2] = 0.7
        result = prune_plain(model, threshold=1e-12)
        assert result.removed == 4
        assert result.approximate == (0 if exact else 2)
        err = max_err(model, result.model)
        assert (err < TOL) if exact else (TOL < err < 0.5)


def test_ratio_prunes_that_fraction():
    plain = plain_of(rmnet)
    result = prune_plain(plain, ratio=0.3)
    assert 0.15 < result.channel_ratio < 0.35  # grouped convs keep some channels for their shape
    assert result.threshold > 0
    scores = torch.cat(channel_scores(plain))
    assert int((scores < result.threshold).sum()) == round(0.3 * scores.numel())


def test_every_layer_keeps_a_channel():
    result = prune_plain(plain_of(rmnet), threshold=1e9)
    assert all(layer["kept"] >= 1 for layer in result.layers)
    assert result.model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 5)


def test_rejects_fused_or_non_plain_models():
    with pytest.raises(PruneError, match="fuse_bn=False"):
        prune_plain(rm.convert(randomize_bn(rmnet())), threshold=0.1)
    with pytest.raises(PruneError, match="nn.Sequential"):
        prune_plain(rmnet(), threshold=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        prune_plain(plain_of(rmnet), threshold=0.1, ratio=0.5)


@pytest.mark.parametrize("family", ["resnet_cifar", "resnext"])
@pytest.mark.parametrize("shortcut_bn", [False, True])
def test_residual_pruning_is_exact(family, shortcut_bn):
    model = randomize_bn(FAMILIES[family](shortcut_bn=shortcut_bn)).double()
    untouched = prune_residual(model, threshold=0.0)
    assert untouched.removed == 0 and max_err(model, untouched.model) == 0.0
    kill(model, fraction=0.5)
    result = prune_residual(model, threshold=1e-12)
    assert result.removed > 0
    assert count_params(result.model) < count_params(model)
    assert max_err(model, result.model) < TOL


def test_residual_stream_channels_go_only_together():
    model = randomize_bn(resnet_cifar()).double()
    with torch.no_grad():
        model.bn1.weight[3] = 0  # the stem alone: the stage's other BNs still use channel 3
        model.layer1[0].bn1.weight[2] = 0  # a block-internal channel is free
    result = prune_residual(model, threshold=1e-12)
    assert result.removed == 1
    assert result.model.layer1[0].conv1.out_channels == 15
    assert result.model.conv1.out_channels == 16


def test_rm_prunes_channels_residual_additions_tie():
    """The paper's claim in miniature: a dead shortcut BN kills the reserved channel after RM
    (its recalibrated identity BN scale is sqrt(eps)), which the ResNet cannot remove."""
    model = randomize_bn(resnet_cifar(shortcut_bn=True)).double()
    with torch.no_grad():
        model.layer1[1].downsample[0].weight[:4] = 0
        model.layer1[1].downsample[0].bias[:4] = 0
    plain = rm.convert(model, fuse_bn=False, downsample="reserve_shortcut")
    data = [torch.randn(8, 3, 32, 32, dtype=torch.float64) for _ in range(2)]
    recalibrate_identity_bn(plain, data)
    rm_result = prune_plain(plain, threshold=5e-3)
    res_result = prune_residual(model, threshold=5e-3)
    assert res_result.removed == 0
    reserve = next(layer for layer in rm_result.layers if layer["layer"] == 9)  # layer1[1]'s reserve conv
    assert reserve["channels"] - reserve["kept"] == 4
    # Other removed channels are constant too (dead ReLUs of the random model); those read through
    # zero padding make the result differ at image borders only.
    assert max_err(model, rm_result.model) < (1e-7 if rm_result.approximate == 0 else 1e-2)


def test_pruned_model_is_a_deploy_artifact(tmp_path):
    plain = kill(plain_of(rmnet))
    pruned = prune_plain(plain, threshold=1e-12).model.float()
    rm.save_deploy(pruned, str(tmp_path / "pruned.pt"), {"name": "rmnet-small"})
    loaded, meta = rm.load_deploy(str(tmp_path / "pruned.pt"))
    assert meta["name"] == "rmnet-small"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(pruned(x), loaded(x))


@pytest.mark.parametrize("downsample", rm.rules.SCHEMES)
def test_shortcut_bn_converts_exactly(downsample):
    model = resnet_cifar(shortcut_bn=True)
    bn_only = [b for b in model.modules() if isinstance(getattr(b, "downsample", None), nn.Sequential)
               and isinstance(b.downsample[0], nn.BatchNorm2d)]
    assert len(bn_only) == 7  # resnet20: 9 blocks, 2 of them with a projection shortcut
    randomize_bn(model)
    report = rm.verify_conversion(model, input_size=32, fuse_bn=False, downsample=downsample)
    assert report["float64"]["max_rel"] < TOL


def test_missed_names_what_a_pruned_model_failed_at():
    from pruning.report import missed

    assert missed(0, 10, 20) == "pruned nothing"
    assert missed(3, 25_000_000, 20_000_000.0) == "target missed: 25.000 M MACs > 20.000 M"
    assert missed(3, 20_000_000, 20_000_000.0) is None and missed(3) is None
