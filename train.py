"""Train a model (Hydra config in conf/train.yaml), then convert the best checkpoint and evaluate both forms.

  python train.py                                   # RMNet-26x3_32 on the embedded synthetic data (a long job)
  python train.py experiment=quickstart             # the README's 4-epoch offline demo
  python train.py experiment=cifar10_rmnet26x3_32   # paper CIFAR recipe (needs CIFAR-10 in data.root)
  torchrun --nproc_per_node=8 train.py experiment=imagenet_repvgg model=rmnet50x6_32
  python train.py --help                            # groups, options and every setting

Every override is checked before any work: a misspelt key or option fails with the valid choices.
"""
from engine.cli import run_app
from engine.stages import run_training

if __name__ == "__main__":
    run_app("train", run_training)
