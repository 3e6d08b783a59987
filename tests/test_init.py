"""Zero-gamma initialisation of the last BN of every residual block, where the authors' scripts do it.

The RMNet authors zero bn3's gamma in every RMBlock (fxmeng/RMNet models/rmnext.py:159-160), so each
block starts as its shortcut; their ResNets (models/resnet2vgg.py) and the RepVGG train.py models keep
torchvision's default (gamma 1), so ours do too (`zero_init_residual` stays an opt-in).
"""
import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

import models
from models.rmnet import RMBlock
from tests.helpers import check_exact, randomize_bn, tiny_config

TINY_RMNET = dict(num_classes=10, stem="cifar", widths=[16, 32, 64, 128])


def _last_bn_weights(model, block_type, name):
    return [getattr(m, name).weight for m in model.modules() if isinstance(m, block_type)]


@pytest.mark.parametrize("name", ["rmnet26x3_32", "rmnet41x4_8_se"])
def test_rmnet_zeroes_bn3_gamma_by_default(name):
    model = models.create_model(name, **TINY_RMNET)
    weights = _last_bn_weights(model, RMBlock, "bn3")
    assert weights and all(torch.count_nonzero(w) == 0 for w in weights)
    # Only bn3: the other BNs (and the shortcut's) keep gamma 1.
    others = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and not n.endswith("bn3")]
    assert others and all(bool((w == 1).all()) for w in others)


def test_zero_init_last_bn_flag_turns_it_off():
    model = models.create_model("rmnet26x3_32", zero_init_last_bn=False, **TINY_RMNET)
    assert all(bool((w == 1).all()) for w in _last_bn_weights(model, RMBlock, "bn3"))


def test_the_flag_reaches_the_model_from_the_config(tmp_path):
    from engine.settings import TrainSettings
    from engine.stages import build
    for value, zero in (("true", True), ("false", False)):
        cfg = tiny_config(tmp_path, "model=rmnet26x3_32", "model.kwargs.widths=[16,32,64,128]",
                          f"model.kwargs.zero_init_last_bn={value}")
        model, _ = build(TrainSettings.from_cfg(cfg))
        assert all(bool((w == 0).all()) == zero for w in _last_bn_weights(model, RMBlock, "bn3"))


@pytest.mark.parametrize("name,block,last", [("resnet18", BasicBlock, "bn2"), ("resnet50", Bottleneck, "bn3")])
def test_resnets_keep_torchvision_default_gamma(name, block, last):
    kw = dict(num_classes=10, stem="cifar", widths=[8, 8, 16, 16])
    assert all(bool((w == 1).all()) for w in _last_bn_weights(models.create_model(name, **kw), block, last))
    zeroed = models.create_model(name, zero_init_residual=True, **kw)
    assert all(torch.count_nonzero(w) == 0 for w in _last_bn_weights(zeroed, block, last))


def test_zero_gamma_model_converts_exactly_with_randomized_bn():
    # The conversion tests randomize every BN (tests.helpers.randomize_bn); check that a zero-init model
    # is among what they cover: its zero bn3 is overwritten, and the conversion is still exact.
    model = randomize_bn(models.create_model("rmnet26x3_32", **TINY_RMNET), seed=5)
    assert all(torch.count_nonzero(w) > 0 for w in _last_bn_weights(model, RMBlock, "bn3"))
    check_exact(model, 16)
