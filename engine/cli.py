"""The command line of every Hydra entry point (train.py, evaluate.py, benchmark.py, prune.py).

`run_app("evaluate", job)` checks the overrides before Hydra sees them (`engine.config.prepare_argv`:
unknown keys, options and model names are named with close matches), then lets Hydra compose the
config (sweeps with `-m`, `--help`, `--cfg job` work as usual) and runs `job(cfg)`. Bad input, in
the overrides or found by the job, ends with `error: <message>` on one line and exit status 2.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from omegaconf import DictConfig

from .config import CONF_DIR, prepare_argv
from .errors import EXIT_USER_ERROR, USER_ERRORS, exit_on_user_error, message


def run_app(config_name: str, job: Callable[[DictConfig], Any]) -> None:
    import hydra

    try:
        sys.argv[1:] = prepare_argv(sys.argv[1:], config_name)
    except USER_ERRORS as e:
        print(f"error: {message(e)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(exit_on_user_error(job))()
