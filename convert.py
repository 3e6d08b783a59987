"""convert.py: a residual model as a plain conv + ReLU deploy artifact with the same outputs, verified on
random input (float64 and float32) and refused above conversion.tolerance. The artifact loads with
`rm.load_deploy` (torch alone) or `artifacts.load`, and runs without this project's model classes.

Examples:
  python convert.py checkpoint=checkpoints/run/best.pt                     # -> deploy/best.pt
  python convert.py checkpoint=resnet50.pth model=resnet50 out=r50_plain.pt  # bare state dict
  python convert.py checkpoint=narrow.pth model=rmnet26x3_32 model.kwargs.widths=[16,32,64,128]
  python convert.py model=rmnet26x3_32 stem=cifar num_classes=10           # random weights
  python convert.py checkpoint=best.pt conversion=keep_bn recalibrate.batches=200 out=a3.pt  # paper A.3
"""
from engine.cli import run_app
from jobs.convert import run

if __name__ == "__main__":
    run_app("convert", run, __doc__, with_keys=True)
