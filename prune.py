"""prune.py: network slimming through RM (paper §3.4, §4.4; the authors' train_pruning.py): sparse-train
the residual model with an L1 penalty on BN scales, convert it with BN kept, prune the plain model (and,
for comparison, the residual one), fine-tune both, report; the Figure 6 plot is redrawn from every
report under output_dir.

Examples:
  python prune.py                                  # sparse-train resnet20 (sr 1e-4), prune at 5e-3 both ways
  python prune.py prune.sr=5e-4 prune.threshold=1e-3 data=cifar10
  python prune.py prune.ratio=0.5                  # global ratio instead of a threshold
  python prune.py prune.eval=PATH                  # evaluate a pruned model (or any checkpoint)
  python prune.py prune.finetune=PATH              # fine-tune a pruned model file, then evaluate it
  python prune.py -m prune.sr=1e-4,5e-4,1e-3 prune.threshold=5e-4,1e-3,5e-3   # Figure 6 sweep
  python -m pruning.figure checkpoints               # (re)draw Figure 6 from the runs' reports
"""

from omegaconf import DictConfig

from engine.cli import run_app, setup_logging
from jobs import prune as pipeline
from pruning.figure import draw_figure6


def main(cfg: DictConfig, explicit: set[str]) -> None:
    setup_logging()
    if cfg.prune.eval:
        pipeline.evaluate_file(cfg, cfg.prune.eval, explicit)
    elif cfg.prune.finetune:
        pipeline.finetune_file(cfg, cfg.prune.finetune, explicit)
    else:
        pipeline.run(cfg)
        draw_figure6(cfg.output_dir)


if __name__ == "__main__":
    run_app("prune", main, __doc__, with_keys=True)
