"""Evaluate a checkpoint in its residual and plain forms: `python evaluate.py --help`.

The logic is in engine/eval_checkpoint.py; the settings in conf/evaluate.yaml.
"""
import sys

import hydra
from omegaconf import DictConfig

from engine.eval_checkpoint import USER_ERRORS, run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
