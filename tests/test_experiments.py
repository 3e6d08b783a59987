"""Every paper recipe in conf/experiment/ composes as train.py composes it, passes the trainer's
config checks, and builds its model (shape-only on the meta device, or for real on a tiny input)."""
import functools
import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

import models
from engine.config import CONF_DIR, check_values
from engine.settings import TrainSettings
from engine.stages import build

PAPER_PREFIXES = ("paper_", "table1_", "table2_", "table3_", "fig5_", "depth_", "a3_")
EXPERIMENTS = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "experiment"))
                     if f.endswith(".yaml") and f.startswith(PAPER_PREFIXES))


@pytest.fixture(scope="module")
def compose_in():
    """compose() of an entry point's config (conf/<name>.yaml) with overrides."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        yield lambda name, *overrides, **kw: compose(name, overrides=list(overrides), **kw)


@pytest.fixture(scope="module")
def compose_train(compose_in):
    """compose() of conf/train.yaml as train.py runs it (hydra config included, for sweeps)."""
    return lambda *overrides: compose_in("train", *overrides, return_hydra_config=True)


def _swept_models(cfg):
    """The model names a multirun recipe sweeps over (hydra.sweeper.params), else [None]."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    return params["model"].split(",") if "model" in params else [None]


def test_every_table_has_its_recipes():
    for expected in ("table1_rmnet26x3_32_cifar10", "table1_resnet34_cifar100", "table1_rmnet152x6_32",
                     "table2_mobilenetv2_rm_cifar10", "table2_mobilenetv1_cifar100", "table3_repvgg_resnet34",
                     "fig5_depth_cifar100", "depth_rmrepvgg133",
                     "a3_finetune_resnet18_cifar10"):
        assert expected in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_recipe_composes_and_builds(name, compose_train):
    swept = _swept_models(compose_train(f"experiment={name}"))
    for i, model_name in enumerate(swept):
        cfg = compose_train(f"experiment={name}", *([f"model={model_name}"] if model_name else []))
        with open_dict(cfg):
            del cfg["hydra"]
            if name.startswith("a3_"):   # A.3 starts from the artifact step 2 of the recipe writes, and trains its
                assert cfg.model.init == f"checkpoints/{cfg.run_name}_bn.pt"   # plain form with BN kept
                cfg.model.init, cfg.model.convert = None, "keep_bn"
        check_values(cfg)
        assert cfg.model.name in models.list_models()
        if cfg.data.name == "imagenet":
            # The RepVGG authors' recipe: 0.1 per 256 images, no decay on BN/bias, cosine, 120 epochs.
            assert (cfg.optim.lr, cfg.optim.lr_batch, cfg.global_batch_size, cfg.optim.weight_decay, cfg.sched.name,
                    cfg.epochs) == (0.1, 256, 256, 1e-4, "cosine", 120) and not cfg.optim.decay_norm_and_bias
        elif name.startswith("table1_"):
            # §4.2: Table 1 follows RepVGG's train.py (cosine, 120 epochs, wd 1e-4 not on BN/bias).
            assert (cfg.optim.lr, cfg.global_batch_size, cfg.optim.weight_decay, cfg.optim.momentum, cfg.epochs,
                    cfg.sched.name, cfg.sched.min_lr_ratio) == (0.1, 256, 1e-4, 0.9, 120, "cosine", 0.0)
            assert not cfg.optim.decay_norm_and_bias
        elif not name.startswith("a3_"):
            # Paper §4.1 CIFAR recipe (Figure 5; Table 2, whose schedule the paper does not give).
            assert (cfg.optim.lr, cfg.global_batch_size, cfg.optim.weight_decay, cfg.optim.momentum, cfg.epochs,
                    cfg.sched.name, cfg.sched.step_epochs, cfg.sched.gamma) == (0.1, 256, 5e-4, 0.9, 200, "step", 60, 0.1)
        with torch.device("meta"):
            model = build(TrainSettings.from_cfg(cfg))[0].eval()
        if i < 2:  # the swept models differ only in depth: forward the first two (RepVGG and RM)
            size = cfg.data.input_size
            assert model(torch.empty(1, 3, size, size, device="meta")).shape == (1, cfg.data.num_classes)


def test_a3_recipe_builds_a_plain_model_with_bn_for_real(compose_train):
    cfg = compose_train("experiment=a3_finetune_resnet18_cifar10")
    with open_dict(cfg):
        cfg.model.init, cfg.model.convert = None, "keep_bn"
    model, spec = build(TrainSettings.from_cfg(cfg))
    assert spec.form == "plain" and not spec.conversion.fuse_bn
    assert isinstance(model, torch.nn.Sequential)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# The composition rule (issue 20 §2.3): in every entry point that trains, a recipe's settings win over the
# entry point's own defaults, and a recipe that sets another entry point's section is refused in one line.
ENTRY_POINTS = ("train", "prune", "amc", "resrep")
RECIPES = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "experiment")) if f.endswith(".yaml"))


def _recipe(name):
    """(group choices, top-level settings) a recipe sets itself or through the recipes it builds on."""
    conf = OmegaConf.load(os.path.join(CONF_DIR, "experiment", f"{name}.yaml"))
    choices, settings = {}, {}
    for entry in conf.get("defaults") or []:
        if isinstance(entry, str):   # a recipe it builds on; its own settings come after
            parent = _recipe(entry)
            choices, settings = {**choices, **parent[0]}, {**settings, **parent[1]}
        else:
            key, value = next(iter(entry.items()))
            choices[key.removeprefix("override ").strip("/")] = value
    return choices, {**settings, **{k: v for k, v in conf.items() if k != "defaults"}}


@functools.cache
def _default(compose_in, entry):
    return compose_in(entry)


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_means_the_same_in_every_entry_point(name, compose_in):
    from engine.config import ConfigError, check_recipe

    choices, settings = _recipe(name)
    owner = next((s for s in ("prune", "amc", "resrep") if s in settings), None)
    for entry in ENTRY_POINTS:
        cfg, default = compose_in(entry, f"experiment={name}"), _default(compose_in, entry)
        if owner not in (None, entry):
            with pytest.raises(ConfigError) as e:
                check_recipe(cfg, entry, name)
            assert "\n" not in str(e.value) and f"a recipe of {owner}.py" in str(e.value)
            continue
        check_recipe(cfg, entry, name)
        assert cfg.model.name == choices.get("model", default.model.name), entry
        assert cfg.data.name == choices.get("data", default.data.name), entry
        assert cfg.epochs == settings.get("epochs", default.epochs), entry
        for section in ("amc", "resrep", "model"):   # the recipe's keys of the entry point's sections too
            for key, value in (settings.get(section) or {}).items():
                got = OmegaConf.to_container(cfg[section])[key]
                if isinstance(value, DictConfig):   # a nested section (amc.agent): the keys the recipe sets
                    got = {k: got[k] for k in value}
                assert got == value, (entry, section, key)
