"""Evaluate a checkpoint in its residual and plain forms: `python evaluate.py --help`.

The logic is in engine/eval_checkpoint.py; the settings in conf/evaluate.yaml.
"""
import hydra
from omegaconf import DictConfig

from engine.errors import exit_on_user_error
from engine.eval_checkpoint import run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
