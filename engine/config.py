"""Checks on the Hydra config: command-line overrides before composition, then the values.

Hydra rejects an unknown group option with a traceback, an unknown key without saying what the
valid keys are, and lets `+key=value` through; so the command line is checked first: every group
option must exist (close matches are named), every plain `key=value` must name an existing key
(close matches and the valid keys beside it are listed), and keys may be added only where
free-form settings live (`model.kwargs`, `model_kwargs`, `hooks`; the `+` is optional there). Keys
under a group that the config leaves unselected (evaluate.py's `data`, which then edits the data
config stored in the checkpoint) are checked against the keys that group's options have.
"""
from __future__ import annotations

import difflib
import functools
import os
import re
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from data.datasets import BAD_IMAGES, DATASETS
from data.transforms import CROPS
from models import STEMS
from rm.rules import SCHEMES

from .amp import AMP_DTYPES
from .distributed import DEVICES
from .faults import NONFINITE_MODES
from .optim import NO_DECAY_RULES, OPTIMIZERS, SCHEDULES

CONVERT_MODES = ("keep_bn", "fuse_bn")   # model.convert: train the plain form, BatchNorm kept or fused

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
FREE_FORM = ("model.kwargs", "model_kwargs", "hooks")
# Enumerated settings, checked before any work starts. Each list is the table of the module that acts
# on the setting, so a choice exists in one place.
CHOICES: dict[str, tuple] = {
    "amp": tuple(AMP_DTYPES),
    "device": DEVICES,
    "model.convert": (None, *CONVERT_MODES),
    "optim.name": tuple(OPTIMIZERS),
    "optim.no_decay": tuple(NO_DECAY_RULES),
    "sched.name": tuple(SCHEDULES),
    "data.name": DATASETS,
    "data.stem": STEMS,
    "data.augment.crop": CROPS,
    "data.bad_images": BAD_IMAGES,
    "conversion.downsample": SCHEMES,
    "nonfinite_loss": NONFINITE_MODES,
}


class ConfigError(ValueError):
    """A bad override or value; the message names it and the valid choices."""


def _groups(config_dir: str) -> set[str]:
    return {d for d in os.listdir(config_dir) if os.path.isdir(os.path.join(config_dir, d))}


def _group_options(config_dir: str, group: str) -> list[str]:
    folder = os.path.join(config_dir, group)
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def entry_groups(config_name: str, config_dir: str = CONF_DIR) -> list[str]:
    """The config groups `conf/<config_name>.yaml` selects (its own defaults list and the configs it includes)."""
    defaults = OmegaConf.load(os.path.join(config_dir, f"{config_name}.yaml")).get("defaults") or []
    groups = []
    for entry in defaults:
        if isinstance(entry, str) and entry != "_self_":
            groups += entry_groups(entry, config_dir)
        elif isinstance(entry, DictConfig):
            group = str(next(iter(entry))).removeprefix("override ")
            if os.path.isdir(os.path.join(config_dir, group)) and group not in groups:
                groups.append(group)
    return list(dict.fromkeys(groups))


def _check_group(config_dir: str, config_name: str, group: str, value: str) -> None:
    """The entry point must select `group`: Hydra answers a group it does not with a traceback, and adds
    one given with `+` that the job then never reads."""
    own = entry_groups(config_name, config_dir)
    if group in own:
        return
    settings = OmegaConf.load(os.path.join(config_dir, f"{config_name}.yaml"))
    close = difflib.get_close_matches(group, [str(k) for k in settings if k not in ("defaults", "hydra")], 1, 0.6)
    hint = ""
    if close:   # benchmark.py model=resnet50 -> models=[resnet50]
        hint = f" Did you mean {close[0]}={f'[{value}]' if isinstance(settings[close[0]], ListConfig) else value}?"
    raise ConfigError(f"{config_name}.py has no {group} group (it takes {', '.join(g + '=' for g in own) or 'none'})."
                      f"{hint} `python {config_name}.py --help` lists its groups and settings")


def _check_option(config_dir: str, group: str, value: str) -> None:
    options = _group_options(config_dir, group)
    if value in options or value == "null":
        return
    close = difflib.get_close_matches(value, options, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    listing = ("`python -m models` lists them" if group == "model"
               else f"options: {', '.join(options)}")
    raise ConfigError(f"unknown {group} {value!r}.{hint} {len(options)} {group} options; {listing}")


def _group_keys(config_dir: str, group: str) -> DictConfig:
    """Every key any option of `group` has (the union of the option files), for checking keys under a
    group the config leaves unselected."""
    merged = OmegaConf.create({})
    for option in _group_options(config_dir, group):
        merged = OmegaConf.merge(merged, OmegaConf.load(os.path.join(config_dir, group, f"{option}.yaml")))
    return merged


def normalize_overrides(argv: Sequence[str], config_name: str = "train", config_dir: str = CONF_DIR) -> list[str]:
    """Check the overrides in `argv` and return them ready for Hydra (free-form keys get their '++').

    Group options are checked first, then the group choices are composed (the first value of a sweep
    such as `model=a,b`) and every key override is checked against the result. Raises ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(argv))
    groups = _groups(config_dir)
    structural = [o for o in overrides if o.key_or_group.split("/")[0] in groups
                  or o.key_or_group.startswith("hydra")]
    for o in structural:
        group = o.key_or_group.split("/")[0]
        if group in groups:
            _check_group(config_dir, config_name, group, str(o.value()))
        if group in groups and not o.is_delete():
            for value in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()]):
                _check_option(config_dir, group, str(value))
    choices = [f"{o.key_or_group}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
               else o.input_line for o in structural]
    with initialize_config_dir(config_dir, version_base="1.3"):
        base = compose(config_name, overrides=choices)
    final = []
    for o in overrides:
        final.append(o.input_line)
        if o in structural:
            continue
        key = o.key_or_group
        free = any(key.startswith(f + ".") and isinstance(OmegaConf.select(base, f), DictConfig) for f in FREE_FORM)
        section = key.split(".")[0]
        if section in groups and OmegaConf.select(base, section) is None and "." in key:
            # an unselected group (evaluate.py's data: null): edits of the config the file stores
            _check_key(OmegaConf.create({section: _group_keys(config_dir, section)}), key)
            final[-1] = "++" + o.input_line.lstrip("+")
            continue
        if o.is_delete():
            raise ConfigError(f"{o.input_line!r}: keys cannot be deleted; set them to null instead")
        if o.is_add() or o.is_force_add():
            if not free:
                raise ConfigError(f"{o.input_line!r}: new keys can only be added under "
                                  f"{' or '.join(FREE_FORM)}; to change an existing key drop the '+'")
        elif free:   # free-form settings need no '+': add or replace them
            final[-1] = "++" + o.input_line
        else:
            _check_key(base, key)
    return final


def check_overrides(argv: Sequence[str], config_name: str = "train", config_dir: str = CONF_DIR) -> DictConfig:
    """The config composed from checked overrides (no sweeps): what `python train.py ARGV` runs."""
    from hydra import compose, initialize_config_dir

    final = normalize_overrides(argv, config_name, config_dir)
    check_recipes(argv, config_name, config_dir)
    with initialize_config_dir(config_dir, version_base="1.3"):
        return compose(config_name, overrides=final)


# The composition rule, one for train.py, prune.py, amc.py and resrep.py: conf/train.yaml's settings <
# the entry point's own (its section, e.g. amc.*, and its defaults of train.py's settings in
# conf/entry/<name>.yaml, which train.yaml lists after its groups and before experiment/) < the recipe
# (experiment=) < the command line. A recipe that sets another entry point's section is that entry
# point's recipe and is refused elsewhere.
ENTRY_GROUP = "entry"


@functools.cache
def own_sections(config_dir: str = CONF_DIR) -> tuple[str, ...]:
    """The entry points whose settings live in a section named after them (prune.py's prune.*,
    amc.py's amc.*, resrep.py's resrep.*)."""
    names = sorted(f[:-5] for f in os.listdir(config_dir) if f.endswith(".yaml"))
    return tuple(n for n in names if n in OmegaConf.load(os.path.join(config_dir, f"{n}.yaml")))


def check_recipe(cfg: DictConfig, config_name: str, recipe: str, config_dir: str = CONF_DIR) -> None:
    """ConfigError when `recipe` (composed into `cfg`) belongs to another entry point than `config_name`."""
    for entry in own_sections(config_dir):
        if entry != config_name and entry in cfg:
            raise ConfigError(f"experiment={recipe} is a recipe of {entry}.py (it sets {entry}.*), not of "
                              f"{config_name}.py: run python {entry}.py experiment={recipe}")


def check_recipes(argv: Sequence[str], config_name: str = "train", config_dir: str = CONF_DIR) -> None:
    """Every recipe `argv` names (each of a sweep) must fit the entry point `config_name`; the entry
    point's defaults (`entry=`) are its own, not a setting."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides(list(argv)):
        if o.key_or_group == ENTRY_GROUP:
            raise ConfigError(f"{o.input_line!r}: {ENTRY_GROUP}/ holds each entry point's own defaults and is not "
                              f"a setting; choose model=, data=, ... or experiment=")
        if o.key_or_group != "experiment" or o.is_delete():
            continue
        for recipe in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()]):
            if recipe is None or str(recipe) == "null":
                continue
            with initialize_config_dir(config_dir, version_base="1.3"):
                check_recipe(compose(config_name, overrides=[f"experiment={recipe}"]), config_name, str(recipe),
                             config_dir)


_HYDRA_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                      "--package", "-p", "--experimental-rerun"}
_HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc"}


def prepare_argv(argv: Sequence[str], config_name: str = "train", config_dir: str = CONF_DIR) -> list[str]:
    """Hydra's command line with its overrides checked and normalised; flags pass through (help and
    info flags skip the check)."""
    flags, overrides, take_value = [], [], False
    for arg in argv:
        if take_value:
            flags.append(arg)
            take_value = False
        elif arg.startswith("-"):
            if arg.split("=")[0] in _HYDRA_INFO_FLAGS:
                return list(argv)
            flags.append(arg)
            take_value = arg in _HYDRA_VALUE_FLAGS
        else:
            overrides.append(arg)
    final = normalize_overrides(overrides, config_name, config_dir)
    check_recipes(overrides, config_name, config_dir)
    return flags + final


def _check_key(cfg: DictConfig, key: str) -> None:
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node.keys():   # `in node` is False for ??? values
            node = node._get_node(part)   # the node, not its value: a ??? value cannot be read
            continue
        where = ".".join(parts[:i])
        if not isinstance(node, DictConfig):
            raise ConfigError(f"unknown key {key!r}: {where!r} is a value, not a group of settings")
        valid = [str(k) for k in node.keys()]
        close = difflib.get_close_matches(part, valid, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr('.'.join(parts[:i] + [c])) for c in close)}?" if close else ""
        raise ConfigError(f"unknown key {key!r}.{hint} Valid keys{' under ' + repr(where) if where else ''}: "
                          f"{', '.join(sorted(valid))}")


def check_choices(cfg: DictConfig) -> None:
    """The enumerated settings `cfg` has (any entry point's config) must be among their choices."""
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key, default="<absent>")
        # cuda:N picks one GPU; entry points that cannot use a given one (train, evaluate) refuse it in
        # D.setup, the benchmark times on it.
        indexed_gpu = key == "device" and isinstance(value, str) and re.fullmatch(r"cuda:\d+", value)
        if value != "<absent>" and value not in choices and not indexed_gpu:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of "
                              f"{', '.join('null' if c is None else c for c in choices)}")


def check_values(cfg: DictConfig) -> None:
    """A training config's enumerated settings and numeric ranges, checked before any work."""
    check_choices(cfg)
    if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {cfg.epochs!r}")
    batches = {key: cfg.get(key) for key in ("batch_size", "global_batch_size")}
    for key, value in batches.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key} must be null or a positive integer, got {value!r}")
    if (batches["batch_size"] is None) == (batches["global_batch_size"] is None):
        got = " and ".join(f"{k}={'null' if v is None else v}" for k, v in batches.items())
        raise ConfigError(f"set one of batch_size (per process) and global_batch_size (split over the processes), "
                          f"got {got}; e.g. batch_size=64 global_batch_size=null")
    if not isinstance(cfg.dist_timeout_min, (int, float)) or cfg.dist_timeout_min <= 0:
        raise ConfigError(f"dist_timeout_min must be a positive number of minutes, got {cfg.dist_timeout_min!r}")
    for key in ("ema_decay",):
        if not 0.0 <= cfg[key] < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {cfg[key]}")
    init = cfg.model.get("init")
    if init and not os.path.isfile(init_path(init)):
        raise ConfigError(f"model.init={init}: no such file; give a checkpoint, deploy artifact or state dict")
    if cfg.resume not in (None, "auto") and not os.path.isfile(str(cfg.resume)):
        raise ConfigError(f"resume={cfg.resume!r}: no such checkpoint; use resume=auto or a path to a last.pt")


def model_kwargs(model_cfg: Any) -> dict[str, Any]:
    """A model section's constructor arguments (`model.kwargs`) as a plain dict."""
    kwargs = model_cfg.get("kwargs") or {}
    return OmegaConf.to_container(kwargs) if isinstance(kwargs, DictConfig) else dict(kwargs)


def init_path(init: str) -> str:
    """The file of `model.init`: a path, optionally written ckpt:PATH or deploy:PATH (version 1)."""
    kind, sep, path = str(init).partition(":")
    return path if sep and kind in ("ckpt", "deploy") else str(init)


def per_process_batch(cfg: Any, world: int) -> int:
    """`batch_size`, or `global_batch_size` split evenly over the `world` processes (check_values has made
    sure exactly one of them is set)."""
    gb = getattr(cfg, "global_batch_size", None)   # a DictConfig or engine.settings.TrainSettings
    if gb is None:
        return cfg.batch_size
    if gb % world:
        lower, upper = gb - gb % world, gb - gb % world + world
        raise ConfigError(f"global_batch_size={gb} does not split evenly over {world} processes; use a multiple of "
                          f"{world} ({', '.join(str(b) for b in (lower, upper) if b > 0)}), or a process count that "
                          f"divides {gb}")
    return gb // world
