"""Train a model (Hydra config in conf/train.yaml), then convert the best checkpoint and evaluate both forms.

  python train.py                                   # RMNet-26x3_32 on the embedded synthetic data
  python train.py experiment=cifar10_rmnet26x3_32   # paper CIFAR recipe (needs CIFAR-10 in data.root)
  torchrun --nproc_per_node=8 train.py experiment=imagenet_repvgg model=rmnet50x6_32
  python train.py --help                            # groups, options and every setting

Every override is checked before any work: a misspelt key or option fails with the valid choices.
"""
import sys

import hydra
from omegaconf import DictConfig

from engine.config import ConfigError, prepare_argv
from engine.errors import exit_on_user_error
from engine.trainer import train


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    try:
        sys.argv[1:] = prepare_argv(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
    main()
