"""Inference benchmark of the residual, BN-folded and plain forms: `python benchmark.py --help`.

The logic is in engine/benchmark.py; the settings in conf/benchmark.yaml.
"""
import hydra
from omegaconf import DictConfig

from engine.benchmark import run
from engine.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="benchmark")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
