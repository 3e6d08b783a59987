"""The command line of every Hydra entry point (train.py, evaluate.py, benchmark.py, convert.py, prune.py,
amc.py, resrep.py).

`run_app("evaluate", job, __doc__)` checks the overrides before Hydra sees them
(`engine.config.prepare_argv`: unknown keys, options and model names are named with close matches),
then lets Hydra compose the config (sweeps with `-m`, `--cfg job` work as usual) and runs `job(cfg)`;
with `with_keys=True`, `job(cfg, keys)`, `keys` the settings the command line set (`data.input_size`
for `data.input_size=16`). This is the one place that reads Hydra's global state: a job called from
Python gets what it is passed, whatever app ran before in the process.
Bad input, in the overrides or found by the job, ends with `error: <message>` on one line and exit
status 2, Ctrl-C with `interrupted` and 130. `--help` prints the entry point's examples, the config
groups with their options and every setting with its description: the commented YAML of
conf/<name>.yaml, which is where the settings are documented (`--hydra-help` is Hydra's own page).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from .config import CONF_DIR, check_choices, entry_groups, prepare_argv
from .errors import exit_on_user_error


def _settings(config_name: str) -> str:
    """conf/<config_name>.yaml without its defaults list and Hydra section: the settings and their comments."""
    lines, skipping = [], False
    with open(os.path.join(CONF_DIR, f"{config_name}.yaml")) as f:
        for line in f:
            top = line[:1] not in (" ", "#", "\n", "-")
            if top:
                skipping = line.startswith(("defaults:", "hydra:"))
            if not skipping:
                lines.append(line.rstrip())
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines).rstrip()


def help_text(config_name: str, doc: str) -> str:
    parts = [doc.strip(), "", "Groups (group=option):"]
    for group in entry_groups(config_name):
        if group == "entry":   # the pruners' own defaults (conf/entry/), chosen by their config, not a user
            continue
        options = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, group)) if f.endswith(".yaml"))
        listing = (f"{len(options)} models, `python -m models` lists them" if group == "model"
                   else ", ".join(options))
        parts.append(f"  {group}: {listing}")
    parts += ["", f"Settings (key=value), from conf/{config_name}.yaml:", "", _settings(config_name)]
    defaults = OmegaConf.load(os.path.join(CONF_DIR, f"{config_name}.yaml")).get("defaults") or []
    if "train" in defaults:   # prune.yaml, resrep.yaml: built on train.yaml
        parts += ["", "and every setting of train.py (python train.py --help)."]
    parts += ["", "Bad input ends with one line `error: ...` and exit status 2. Hydra's own flags: --hydra-help."]
    return "\n".join(parts)


def setup_logging() -> None:
    """The pruning jobs' log: this project's messages (loggers under `rmnet`) at INFO, everything else
    (the ONNX exporter and quantizer, called for the reports' speeds) at WARNING, so their
    per-pass chatter does not bury the job's own lines."""
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("rmnet").setLevel(logging.INFO)


def _command_line_keys() -> frozenset[str]:
    """The keys the running Hydra job's command line set (`data.input_size` for `data.input_size=16` or
    `+data.input_size=16`); only inside `run_app`."""
    from hydra.core.hydra_config import HydraConfig

    return frozenset(o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)


def run_app(config_name: str, job: Callable[..., Any], doc: str = "", with_keys: bool = False) -> None:
    import hydra

    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        print(help_text(config_name, doc))
        return
    sys.argv[1:] = exit_on_user_error(prepare_argv)(sys.argv[1:], config_name)

    def checked(cfg: DictConfig) -> Any:
        check_choices(cfg)
        return job(cfg, _command_line_keys()) if with_keys else job(cfg)

    hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(exit_on_user_error(checked))()
