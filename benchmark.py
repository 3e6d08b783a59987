"""Inference benchmark of the residual, BN-folded and plain forms: `python benchmark.py --help`.

The logic is in engine/benchmark.py; the settings in conf/benchmark.yaml.
"""
import sys

import hydra
from omegaconf import DictConfig

from engine.benchmark import USER_ERRORS, run


@hydra.main(version_base="1.3", config_path="conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
