"""Hydra configs: a config per registered model, strict override checks, experiments compose."""
import os

import pytest
from omegaconf import OmegaConf

import models
from engine.config import CONF_DIR, ConfigError, check_overrides, check_values
from engine.settings import TrainSettings
from engine.stages import build
from tests.helpers import run_script


def test_every_registered_model_has_a_config():
    missing = [n for n in models.list_models() if not os.path.isfile(os.path.join(CONF_DIR, "model", f"{n}.yaml"))]
    assert not missing, f"run scripts/gen_model_configs.py; no conf/model file for {missing}"
    for name in ("rmnet50x6_32", "resnet20", "repvgg_b1"):
        assert check_overrides([f"model={name}"]).model.name == name


@pytest.mark.parametrize("override, words", [
    ("epoch=3", ["'epochs'", "batch_size"]),
    ("optim.lrr=0.1", ["'optim.lr'", "momentum"]),
    ("data.augment.crops=pad", ["'data.augment.crop'"]),
    ("+foo=1", ["model.kwargs", "hooks"]),
    ("~epochs", ["cannot be deleted"]),
])
def test_bad_keys_fail_with_the_valid_choices(override, words):
    with pytest.raises(ConfigError) as e:
        check_overrides([override])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("model=rmnet26x3_3", r"unknown model 'rmnet26x3_3'. Did you mean: rmnet26x3_32"),
    ("model=resnet18,rmnet50x6", r"unknown model 'rmnet50x6'. Did you mean: rmnet50x6_32"),   # a sweep
    ("data=cifar11", r"unknown data 'cifar11'. Did you mean: cifar10, cifar100\? .*options: cifar10, cifar100, imagenet"),
    ("optim=adamx", r"unknown optim 'adamx'. Did you mean: adamw\?"),
])
def test_unknown_group_option_names_the_close_ones(override, message):
    with pytest.raises(ConfigError, match=message):
        check_overrides([override])


def test_free_form_keys_and_values():
    cfg = check_overrides(["+model.kwargs.zero_init_residual=true", "+hooks.bn_l1.sr=1e-4"])
    assert cfg.model.kwargs.zero_init_residual and cfg.hooks.bn_l1.sr == 1e-4
    with pytest.raises(ConfigError, match="bf16"):
        check_values(check_overrides(["amp=fp32"]))
    with pytest.raises(ConfigError, match="model.init=weights.pt: no such file"):
        check_values(check_overrides(["model.init=weights.pt"]))


@pytest.mark.parametrize("experiment", ["quickstart", "cifar10_rmnet26x3_32", "imagenet_repvgg"])  # the trainer's
def test_experiments_compose_and_validate(experiment):
    check_values(check_overrides([f"experiment={experiment}"]))


def test_data_config_decides_stem_and_classes():
    cfg = check_overrides(["model=resnet18", "data=cifar100"])
    model, spec = build(TrainSettings.from_cfg(cfg))
    assert spec.stem == "cifar" and model.fc.out_features == 100
    assert model.conv1.stride == (1, 1)   # the CIFAR stem
    cfg = check_overrides(["model=resnet20", "data=imagenet"])
    with pytest.raises(ValueError, match="no 'imagenet' stem"):
        build(TrainSettings.from_cfg(cfg))


def test_train_settings_are_built_once_and_edited_as_values(tmp_path):
    """TrainSettings: a train config's values, typed, in conf/train.yaml's layout again for config.yaml and
    checkpoints; a pruner's run is a copy with other values (its own section is not the trainer's)."""
    cfg = check_overrides(["model=resnet18", "data=cifar100", "+hooks.bn_l1.sr=1e-4", "optim.lr=0.2"])
    settings = TrainSettings.from_cfg(cfg)
    assert settings.to_dict() == OmegaConf.to_container(cfg, resolve=True)
    assert settings.final is True and settings.hooks == {"bn_l1": {"sr": 1e-4}} and settings.model.kwargs == {}
    narrow = settings.with_model_kwargs(shortcut_bn=True).at_lr(0.01)
    assert narrow.model.kwargs == {"shortcut_bn": True} and narrow.optim.lr == 0.01
    assert settings.model.kwargs == {} and settings.optim.lr == 0.2   # the original is untouched

    from pruning.common import train_settings
    pruner = check_overrides(["model=resnet20", "+hooks.bn_l1.sr=1e-4"], config_name="prune")
    run = train_settings(pruner, str(tmp_path), "finetune", {"resrep": {"target": 1.0}})
    assert (run.output_dir, run.run_name, run.resume, run.final) == (str(tmp_path), "finetune", "auto", False)
    assert run.hooks == {"resrep": {"target": 1.0}} and "prune" not in run.to_dict()
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        TrainSettings.from_cfg(check_overrides(["epochs=0"]))


def test_recipes_of_one_entry_point_are_refused_by_the_others_in_one_line(capsys):
    """Through the command line of the entry point, before any work; also each of a sweep, and entry=."""
    for script, argv, message in [
            ("train", ["experiment=amc_cifar10_r0.5"], "experiment=amc_cifar10_r0.5 is a recipe of amc.py"),
            ("amc", ["-m", "experiment=amc_cifar10_r0.5,resrep_resnet56_cifar10"], "a recipe of resrep.py"),
            ("prune", ["entry=amc"], "not a setting")]:
        code, out, err = run_script(script, argv)
        assert code == 2 and err.count("\n") == 1 and message in err, err
