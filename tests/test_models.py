import pytest
import torch
import torchvision

import models
from models.complexity import count_params


def test_registry_lists_all_families():
    names = models.list_models()
    for family in ("resnet18", "resnet110", "resnext50_32x4d", "rmnet50x6_32", "rmnet26x3_32",
                   "repvgg_b3g4", "repvgg133", "rmrepvgg133"):
        assert family in names
    assert models.list_models("rmnet*") == sorted(n for n in names if n.startswith("rmnet"))


def test_unknown_model_suggests_close_names():
    with pytest.raises(models.UnknownModelError, match="rmnet50x6_32"):
        models.create_model("rmnet50x6_23")


def test_stem_is_explicit_and_validated():
    assert models.create_model("resnet18", num_classes=10, stem="cifar").conv1.kernel_size == (3, 3)
    assert models.create_model("resnet18", num_classes=10).conv1.kernel_size == (7, 7)
    with pytest.raises(ValueError, match="stem"):
        models.create_model("resnet18", stem="mnist")
    with pytest.raises(ValueError, match="cifar"):
        models.create_model("resnet20", stem="imagenet")
    with pytest.raises(ValueError, match="num_classes"):
        models.create_model("resnet18", num_classes=0)


@pytest.mark.parametrize("name,stem,classes,expected_m", [
    ("resnet18", "imagenet", 1000, 11.69), ("resnet34", "imagenet", 1000, 21.80),
    ("resnet50", "imagenet", 1000, 25.56), ("resnet101", "imagenet", 1000, 44.55),
    ("resnet152", "imagenet", 1000, 60.19), ("resnet34", "cifar", 10, 21.28),
    ("rmnet50x6_32", "imagenet", 1000, 40.82), ("rmnet41x4_8", "imagenet", 1000, 11.24),
    ("rmnet26x3_32", "cifar", 10, 8.91),
])
def test_training_form_parameter_counts(name, stem, classes, expected_m):
    with torch.device("meta"):
        model = models.create_model(name, num_classes=classes, stem=stem)
    assert count_params(model) / 1e6 == pytest.approx(expected_m, abs=0.006)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_torchvision_checkpoints_load_unchanged(name):
    tv = getattr(torchvision.models, name)().eval()
    ours = models.create_model(name).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,stem,size", [("rmnet26x3_32", "cifar", 32), ("repvgg_a0", "cifar", 32),
                                            ("rmrepvgg21", "imagenet", 64), ("resnet20", "cifar", 32)])
def test_forward_shapes(name, stem, size):
    model = models.create_model(name, num_classes=7, stem=stem)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
    assert models.ModelSpec(name, 7, stem).input_size == models.INPUT_SIZE[stem]   # nominal: nothing trained


@pytest.mark.parametrize("name,widths", [
    ("resnet18", [8, 8, 16, 16]), ("resnet56", [8, 8, 16]), ("rmnet26x3_32", [16, 32, 64, 128]),
    ("repvgg_a0", [8, 16, 32, 64]), ("repvgg21", [8, 16, 32, 64]), ("preactresnet18", [8, 8, 16, 16]),
    ("repvgg_resnet18", [8, 8, 16, 16]), ("se_resnet18", [8, 8, 16, 16])])
def test_every_family_with_stages_takes_narrow_widths(name, widths):
    model = models.create_model(name, num_classes=5, stem="cifar", widths=widths)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5)
    [classifier] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert classifier.in_features == widths[-1]   # the last stage is as wide as asked


@pytest.mark.parametrize("name,kwargs,message", [
    ("resnet56", {"widths": [16, 32, 64, 128]}, r"3 stages: widths takes 3 positive integers, got \[16, 32, 64, 128\]"),
    ("repvgg_a0", {"widths": [8, 16]}, r"RepVGG has 4 stages"),
    ("mobilenetv2_rm", {"widths": [8]}, r"width_mult .* no widths list"),
    ("resnet18", {"depth": 3}, r"resnet18 \(resnet family\) takes no argument 'depth' \(model.kwargs.depth\)"),
])
def test_widths_a_family_cannot_take_are_refused_in_one_line(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.create_model(name, num_classes=5, stem="cifar", **kwargs)


def test_timm_registration():
    timm = pytest.importorskip("timm")
    model = timm.create_model("rmnet50x6_32", num_classes=10)
    assert isinstance(model, models.rmnet.RMNet)
    # timm keeps its own models under the names it already had.
    assert type(timm.create_model("resnet18")).__module__.startswith("timm")
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("rmnet26x3_32", pretrained=True)
