"""optim.no_decay and optim.bias_lr_factor: today's rule by default, the RMNet/RepVGG authors' train.py
(fxmeng/RMNet train.py sgd_optimizer) as options."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from engine.config import ConfigError, check_choices
from engine.optim import build_optimizer, build_scheduler
from models import create_model
from tests.helpers import tiny_config


def _model():
    return create_model("resnet18", num_classes=10, stem="cifar", widths=[4, 8, 8, 8])


def _optim(**kw):
    return OmegaConf.create({"name": "sgd", "lr": 0.1, "lr_batch": None, "momentum": 0.9, "nesterov": False,
                             "weight_decay": 5e-4, "decay_norm_and_bias": False, **kw})


def _settings(optimizer, model) -> dict[str, tuple[float, float]]:
    """(weight decay, lr) of every named parameter."""
    of = {id(p): (g["weight_decay"], g["lr"]) for g in optimizer.param_groups for p in g["params"]}
    return {name: of[id(p)] for name, p in model.named_parameters()}


def test_defaults_are_todays_rule(tmp_path):
    cfg = tiny_config(tmp_path)
    assert (cfg.optim.no_decay, cfg.optim.bias_lr_factor) == ("ndim", 1.0)
    model = _model()
    got = _settings(build_optimizer(model, cfg.optim, 16), model)
    for name, p in model.named_parameters():
        assert got[name] == (0.0 if p.ndim < 2 else cfg.optim.weight_decay, cfg.optim.lr), name


def test_the_authors_decay_rule_decays_the_shortcut_bn():
    model = _model()
    got = _settings(build_optimizer(model, _optim(no_decay="names"), 16), model)
    assert got["layer2.0.downsample.1.weight"][0] == 5e-4 and got["layer2.0.downsample.1.bias"][0] == 0.0
    assert got["layer1.0.bn1.weight"][0] == 0.0 and got["conv1.weight"][0] == 5e-4 and got["fc.bias"][0] == 0.0
    today = _settings(build_optimizer(model, _optim(), 16), model)
    assert today["layer2.0.downsample.1.weight"][0] == 0.0
    everything = _settings(build_optimizer(model, _optim(no_decay="names", decay_norm_and_bias=True), 16), model)
    assert {wd for wd, _ in everything.values()} == {5e-4}


def test_bias_lr_factor_doubles_the_biases_lr_through_the_schedule():
    model = _model()
    optimizer = build_optimizer(model, _optim(no_decay="names", bias_lr_factor=2.0), 16)
    got = _settings(optimizer, model)
    for name in got:
        assert got[name][1] == pytest.approx(0.2 if "bias" in name else 0.1), name
    sched = build_scheduler(optimizer, OmegaConf.create({"name": "cosine", "warmup_epochs": 0, "min_lr_ratio": 0.0}),
                            10, 2)
    for _ in range(7):
        optimizer.step()
        sched.step()
    lrs = {round(g["lr"] / max(group["lr"] for group in optimizer.param_groups), 6) for g in optimizer.param_groups}
    assert lrs == {0.5, 1.0}


def test_an_unknown_rule_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, "optim.no_decay=bn_only")
    with pytest.raises(ConfigError, match="optim.no_decay"):
        check_choices(cfg)
    with pytest.raises(ValueError, match="optim.no_decay"):
        build_optimizer(_model(), _optim(no_decay="bn_only"), 16)
