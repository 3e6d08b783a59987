"""Other libraries' models through `rm.convert`: real timm (and torchvision) model objects, fresh random
weights, randomised BatchNorm statistics, float64 and float32. Narrow widths (`channels=`) keep every
block type, stem, shortcut and gate of the named architecture at a fraction of the cost; the full-size
models run under `-m slow`. The sweep over 207 timm names is tests/test_timm_sweep.py."""
import pytest
import timm
import torch
import torch.nn as nn
import torchvision

import artifacts
import rm
from models.timm_compat import register_with_timm
from tests.helpers import check_exact, randomize_bn

PLAIN = (nn.Conv2d, nn.ReLU, nn.PReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
         nn.Linear, rm.SqueezeExcite, rm.deploy.InputSizeCheck)
NARROW = {"channels": (16, 32, 64, 128), "stem_width": 8, "num_classes": 10}
ACCEPTANCE = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "seresnet50", "ecaresnet50d", "wide_resnet50_2",
              "resnet50d"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny convs on a busy machine: one thread is many times faster than two."""


def _timm(name: str, seed: int = 0, gamma_scale: float = 1.0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(timm.create_model(name, pretrained=False, **kwargs), seed, gamma_scale)


def _check_plain(model: nn.Module, size: int, **kwargs) -> None:
    check_exact(model, size, **kwargs)
    plain = rm.convert(model, **kwargs)
    assert isinstance(plain, nn.Sequential)
    assert all(isinstance(m, PLAIN + (nn.BatchNorm2d,) * (not kwargs.get("fuse_bn", True))) for m in plain), \
        sorted({type(m).__name__ for m in plain})


@pytest.mark.parametrize("name", ACCEPTANCE)
def test_timm_resnets_convert_exactly(name):
    _check_plain(_timm(name, ACCEPTANCE.index(name), **NARROW), 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ACCEPTANCE)
def test_timm_resnets_convert_exactly_at_full_size(name):
    _check_plain(_timm(name, ACCEPTANCE.index(name)), 64)


@pytest.mark.parametrize("name", ["resnet18d", "ecaresnet26t"])
def test_both_schemes_and_kept_batchnorm(name):
    """ResNet-D's average-pool shortcut and ECA's gate under the other scheme and with BN kept."""
    model = _timm(name, 5, **NARROW)
    _check_plain(model, 32, downsample="reserve_shortcut")
    _check_plain(model, 32, fuse_bn=False)


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs).eval()


def _overlapping_aa_pool() -> nn.Module:
    """resnetaa34d's pools 2x2/2 compose into the conv after them; an overlapping, padded pool does not."""
    model = _meta("resnetaa34d")
    model.layer2[0].aa = nn.AvgPool2d(3, 2, 1)
    return model.eval()


def _silu_in_a_block() -> nn.Module:
    model = _meta("resnet18")
    model.layer2[1].act1 = nn.SiLU()
    return model.eval()


REFUSED = {
    "GroupNorm": (lambda: _meta("resnet50_gn"), r"ResNet\.bn1 of type timm\.layers\.norm\.GroupNorm: it normalises"),
    "blur pool": (lambda: _meta("resnetblur18"), r"maxpool\.1 of type timm\.layers\.blur_pool\.BlurPool2d: .*reflection"),
    "anti-aliasing in a block": (_overlapping_aa_pool,
                                 r"layer2\.0 of type timm\.models\.resnet\.BasicBlock: its anti-aliasing layer aa "
                                 r"\(AvgPool2d\(kernel_size=3, stride=2, padding=1\)\)"),
    "SiLU on the reserved path": (_silu_in_a_block, r"layer2\.1 of type timm\.models\.resnet\.BasicBlock: act1 is "
                                                    r"torch\.nn\.modules\.activation\.SiLU; the plain chain's activations"),
    "effective SE": (lambda: _meta("resnet18", block_args={"attn_layer": "ese"}),
                     r"layer1\.0 of type .*BasicBlock: its attention module se \(.*EffectiveSEModule\)"),
    "3x3 shortcut": (lambda: _meta("resnet18", down_kernel_size=3), r"layer2\.0 of type .*BasicBlock: only 1x1"),
    "avg+max head": (lambda: _meta("resnet18", global_pool="avgmax"), r"global_pool of type .*: pool_type 'avgmax'"),
    "another timm family": (lambda: _meta("resnet32ts"), r"ByobNet\.stem\.conv1\.bn\.act of type torch\.nn\.modules\."
                                                         r"activation\.SiLU: the plain chain's activations"),
    "torchvision MobileNetV2": (lambda: torchvision.models.mobilenet_v2().eval(),
                                r"MobileNetV2 of type torchvision\.models\.mobilenetv2\.MobileNetV2: its blocks use ReLU6"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals_name_the_block_its_class_and_the_reason(case):
    build, message = REFUSED[case]
    with pytest.raises(rm.ConversionError, match=message) as err:
        rm.convert(build())
    assert "\n" not in str(err.value)


def test_a_timm_pretrained_state_dict_loads_unchanged(tmp_path):
    """What `pretrained=True` loads is a state dict of the model's own keys: saved and loaded again it
    converts as it is; its keys equal torchvision's, so `artifacts.load` reads it as our resnet18 too."""
    source = _timm("resnet18", 7)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = timm.create_model("resnet18", pretrained=False)
    model.load_state_dict(torch.load(tmp_path / "resnet18.pth", weights_only=True))
    plain = rm.convert(model.eval())
    ours = artifacts.load(tmp_path / "resnet18.pth", name="resnet18").model
    x = torch.randn(2, 3, 64, 64)
    ref = source(x)
    for out in (plain(x), ours(x)):
        assert (out - ref).abs().max() / ref.abs().max() < 1e-5


def test_timm_pretrained_points_to_loaders_that_exist():
    """The refusal pointed to `models.loading`, which no longer exists; every Python name it names must."""
    import importlib
    import re

    name = register_with_timm()[0]
    with pytest.raises(ValueError, match="no pretrained weights") as e:
        timm.create_model(name, pretrained=True)
    names = re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)", str(e.value))
    assert "artifacts.load" in names, str(e.value)
    for dotted in names:
        module, _, attr = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), dotted
