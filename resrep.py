"""resrep.py: ResRep pruning (Ding et al., ICCV 2021) of a residual model and, through RM, of its plain
form on every layer: compactors after the BNs, training with gradient resetting and the mask schedule
until the folded model meets the MACs target, the exact fold, evaluation, CPU img/s, report.json/.md.

Examples:
  python resrep.py                                        # resnet20 on synthetic data, 50% of the MACs removed
  python resrep.py resrep.forms=[rm] resrep.target=0.6
  python resrep.py experiment=resrep_resnet56_cifar10 resrep.base=checkpoints/resnet56_cifar10/best.pt
  torchrun --nproc_per_node=8 resrep.py experiment=resrep_resnet50_imagenet resrep.base=resnet50.pth
"""

from omegaconf import DictConfig

from engine.cli import run_app, setup_logging
from jobs import resrep as pipeline


def main(cfg: DictConfig) -> None:
    setup_logging()
    pipeline.run(cfg)


if __name__ == "__main__":
    run_app("resrep", main, __doc__)
