"""MobileNetV2 -> MobileNetV1, pre-activation ResNet and SE blocks: exact conversion, plain chains,
the composition pass (paper eq. 4) and MobileNetV1's shapes and cost."""
import pytest
import torch
import torch.nn as nn

import models
import rm
from models.complexity import count_macs, count_params, paper_flops
from models.mobilenet import V1_PAIRS
from models.preact_resnet import PreActBlock, PreActBottleneck, PreActResNet
from models.resnet import ResNet, SEBasicBlock, SEBottleneck
from models.rmnet import RMNet
from rm.deploy import SqueezeExcite
from tests.helpers import check_exact, randomize_bn

SMALL = {
    "mobilenetv2_rm": lambda stem: models.create_model("mobilenetv2_rm", num_classes=5, stem=stem, width_mult=0.125),
    "preact_basic": lambda stem: PreActResNet(PreActBlock, [1, 2, 1, 1], 5, stem, widths=(8, 16, 32, 64)),
    "preact_bottleneck": lambda stem: PreActResNet(PreActBottleneck, [2, 1, 1, 1], 5, stem, widths=(4, 8, 8, 8)),
    "se_resnet_basic": lambda stem: ResNet(SEBasicBlock, [1, 2, 1, 1], 5, stem, widths=(8, 16, 32, 64)),
    "se_resnet_bottleneck": lambda stem: ResNet(SEBottleneck, [2, 1, 1, 1], 5, stem, widths=(8, 16, 16, 16)),
    "rmnet_se": lambda stem: RMNet([1, 2, 1, 1], 3, 4, num_classes=5, stem=stem, widths=(8, 16, 32, 64), se=True),
}
PLAIN = (nn.Conv2d, nn.ReLU, nn.PReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)


def max_bn_output(model: nn.Module, x: torch.Tensor) -> float:
    """Largest BatchNorm output (the pre-activation of the ReLU after it) on input x."""
    peak = []
    hooks = [m.register_forward_hook(lambda m, i, o: peak.append(o.max().item()))
             for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return max(peak)


@pytest.mark.parametrize("fuse_bn,downsample", [(True, "reserve_input"), (True, "reserve_shortcut"),
                                                (False, "reserve_input")])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("family", sorted(SMALL))
def test_new_families_convert_exactly(family, stem, fuse_bn, downsample):
    size = 32 if stem == "cifar" else 64
    # Large BN scales: pre-activations well above 6 (14 to 1500 here), where a ReLU6 -> ReLU swap
    # would show; larger scales compound over depth until float32 rounding alone exceeds 1e-5.
    model = randomize_bn(SMALL[family](stem), seed=len(family), gamma_scale=1.5)
    assert max_bn_output(model, torch.randn(2, 3, size, size)) > 6
    check_exact(model, size, fuse_bn=fuse_bn, downsample=downsample)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_new_families_give_plain_chains(family):
    plain = rm.convert(randomize_bn(SMALL[family]("cifar")))
    gates = [m for m in plain if isinstance(m, SqueezeExcite)]
    assert all(isinstance(m, PLAIN + (SqueezeExcite,)) for m in plain)
    assert bool(gates) == family.startswith(("se_", "rmnet_se"))
    # Every SE block here has reserved channels, and they bypass the gate.
    assert all(g.gated < g.channels for g in gates)


def test_se_deploy_artifact_round_trip(tmp_path):
    model = randomize_bn(SMALL["rmnet_se"]("cifar"))
    plain = rm.convert(model)
    rm.save_deploy(plain, str(tmp_path / "se.pt"))
    loaded, _ = rm.load_deploy(str(tmp_path / "se.pt"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def _conv_shapes(net: nn.Module) -> list[tuple]:
    return [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.groups)
            for m in net.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("ratio,width_mult", [(2, 1.0), (4, 1.0), (4, 0.5)])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_mobilenetv2_converts_to_mobilenetv1(stem, ratio, width_mult):
    kw = dict(num_classes=10, stem=stem, width_mult=width_mult)
    v2 = models.create_model("mobilenetv2_rm", ratio=ratio, **kw).eval()
    cin = int(32 * width_mult)
    expected = [(3, cin, 3, 1 if stem == "cifar" else 2, 1)]
    for cout, stride in V1_PAIRS:
        cout = int(cout * width_mult)
        expected += [(cin, cin, 3, stride, cin), (cin, cout, 1, 1, 1)]
        cin = cout
    assert _conv_shapes(rm.convert(v2)) == expected
    assert _conv_shapes(models.create_model("mobilenetv1", **kw)) == expected


def test_mobilenet_costs():
    """Paper Table 2 prints 47.1 M "FLOPs" for MobileNetV1 on CIFAR-10: its convention (MACs + one
    op per BN and ReLU output) on the trained V1 gives 47.18 M; the bare MACs of both forms of
    MobileNetV1 are 46.35 M. ImageNet MobileNetV1: 569 M MACs, 4.2 M params (Howard et al.)."""
    v2 = models.create_model("mobilenetv2_rm", num_classes=10, stem="cifar").eval()
    v1 = models.create_model("mobilenetv1", num_classes=10, stem="cifar").eval()
    assert count_macs(rm.convert(v2), 32) == count_macs(v1, 32) == 46_354_432
    assert paper_flops(v1, 32) / 1e6 == pytest.approx(47.1, rel=5e-3)
    assert count_macs(v2, 32) == 22_549_504  # the training form (ratio 4)
    with torch.device("meta"):
        v1_imagenet = models.create_model("mobilenetv1").eval()
    assert count_macs(v1_imagenet, 224) / 1e6 == pytest.approx(569, rel=5e-3)
    assert count_params(v1_imagenet) / 1e6 == pytest.approx(4.23, abs=0.01)


def _exact_chain(net: nn.Sequential, convs: int) -> None:
    net = randomize_bn(net)
    plain = rm.convert(net)
    assert sum(isinstance(m, nn.Conv2d) for m in plain) == convs
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-5)


def test_linear_convs_are_composed_where_exact():
    # kxk conv + BN, then a pointwise conv: one conv of the first's geometry (eq. 4).
    _exact_chain(nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1), nn.ReLU()), 1)
    # An unbiased pointwise conv, then a padded 3x3: one conv of the second's geometry.
    _exact_chain(nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.Conv2d(8, 6, 3, padding=1)), 1)
    # A biased pointwise conv before a zero-padded 3x3: the border would change, so two convs.
    _exact_chain(nn.Sequential(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 6, 3, padding=1)), 2)
    # A grouped conv is not densified.
    _exact_chain(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.Conv2d(8, 6, 1)), 2)


def test_preact_block_without_a_preceding_conv_is_refused():
    net = randomize_bn(nn.Sequential(PreActBlock(8, 8)))
    with pytest.raises(rm.ConversionError, match="pre-activation"):
        rm.convert(net)


def test_mobilenetv2_ratio_is_validated():
    with pytest.raises(ValueError, match="ratio"):
        models.create_model("mobilenetv2_rm", ratio=3)
