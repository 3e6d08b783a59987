"""RepVGG-18/34 (paper Table 3): ResNet-18/34 layout, RepVGG blocks, no shortcuts."""
import pytest
import torch
import torch.nn as nn

import models
import rm
from models.repvgg import RepVGGBlock
from tests.helpers import randomize_bn


@pytest.mark.parametrize("name,layers", [("repvgg_resnet18", 16), ("repvgg_resnet34", 32)])
def test_layout_mirrors_resnet(name, layers):
    with torch.device("meta"):
        ours = models.create_model(name)
        resnet = models.create_model(name.replace("repvgg_", ""))
    assert sum(isinstance(m, RepVGGBlock) for m in ours.modules()) == layers
    # Same stem and per-stage widths/strides as the ResNet it mirrors.
    assert ours.conv1.weight.shape == resnet.conv1.weight.shape and isinstance(ours.maxpool, nn.MaxPool2d)
    for i in range(1, 5):
        stage, ref = getattr(ours, f"layer{i}"), getattr(resnet, f"layer{i}")
        assert len(stage) == 2 * len(ref)
        assert stage[0].rbr_dense.conv.stride == ref[0].conv1.stride
        assert stage[-1].rbr_dense.conv.out_channels == ref[-1].conv2.out_channels


@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet", 64)])
def test_converts_exactly_to_a_plain_chain(stem, size):
    model = models.create_model("repvgg_resnet18", num_classes=7, stem=stem, widths=(8, 16, 16, 32))
    randomize_bn(model.double())
    plain = rm.convert(model)
    convs = [m for m in plain if isinstance(m, nn.Conv2d)]
    assert len(convs) == 17 and all(c.kernel_size == (3, 3) for c in convs[1:])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    torch.testing.assert_close(plain(x), model(x), rtol=1e-10, atol=1e-10)
