"""train.py: train a model (torchrun for DDP), then convert its best checkpoint to the plain form, evaluate
both forms and write the verified deploy artifact, in checkpoints/<model>-<data>-<time>/.

Examples:
  python train.py experiment=quickstart             # the README's 4-epoch offline demo (about a minute on a CPU)
  python train.py                                   # full-width RMNet-26x3_32, 120 epochs: hours on a CPU
  python train.py experiment=cifar10_rmnet26x3_32   # paper CIFAR recipe (needs CIFAR-10 in data.root)
  torchrun --nproc_per_node=8 train.py experiment=imagenet_repvgg model=rmnet50x6_32
  python train.py model.init=checkpoints/run/best.pt model.convert=keep_bn   # fine-tune the plain form
  python train.py resume=auto                       # continue the latest run of this model and data
"""
from engine.cli import run_app
from jobs.train import run as run_training

if __name__ == "__main__":
    run_app("train", run_training, __doc__)
