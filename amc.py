"""amc.py: RM + AMC (the authors' RM+AMC README; He et al., "AMC", ECCV 2018). Train the RM-able
MobileNetV2 (or take a checkpoint), convert it with RM to MobileNetV1 with BN kept, search per-layer
keep ratios under a FLOPs budget with AMC's DDPG agent on held-out training images, prune, fine-tune,
evaluate and time it; the same search on the residual model is the AMC baseline. The authors'
ReLU6 MobileNetV2 (model=mobilenetv2) converts only approximately (amc.relu6=approximate, measured
and reported, then fine-tuned: their step 2). Also runs on the plain RMNet/ResNet models
(model=resnet20, ...). A killed search resumes when run again.

Examples:
  python amc.py                                         # mobilenetv2_rm on synthetic data, FLOPs ratio 0.5
  python amc.py experiment=amc_cifar10_r0.5             # the authors' CIFAR-10 row: their ReLU6 MobileNetV2 (GPU recipe)
  python amc.py experiment=amc_imagenet_r0.5            # the same row read as ImageNet (their 71.79% baseline)
  python amc.py experiment=amc_cifar10_ours             # ours: the exact ReLU mobilenetv2_rm, same settings
  python amc.py amc.checkpoint=RUN/best.pt amc.flops_ratio=0.7
  python amc.py -m amc.flops_ratio=0.5,0.6,0.7,0.75     # the table's budgets from one trained model
  python amc.py model=rmnet26x3_32 amc.forms=[rm]  # families without a residual baseline: RM + AMC alone
"""

from omegaconf import DictConfig

from engine.cli import run_app, setup_logging
from jobs import amc as pipeline


def main(cfg: DictConfig) -> None:
    setup_logging()
    pipeline.run(cfg)


if __name__ == "__main__":
    run_app("amc", main, __doc__)
