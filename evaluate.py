"""evaluate.py: top-1, top-5, loss and img/s of a checkpoint's residual form and its RM-converted plain
form, plus the conversion error; exact under torchrun (every image counted once). The model is read at
the input size and normalisation it was trained with; the report goes to <checkpoint>.eval-<data>.json.

Examples:
  python evaluate.py checkpoint=checkpoints/run/best.pt                   # the run's stored data config
  python evaluate.py checkpoint=checkpoints/run/deploy.pt                 # deploy artifact: plain form only
  python evaluate.py checkpoint=best.pt data=imagenet data.root=/data/imagenet
  python evaluate.py checkpoint=resnet50.pth model=resnet50 data=imagenet # bare state dict
  torchrun --nproc_per_node=8 evaluate.py checkpoint=best.pt batch_size=128
"""
from engine.cli import run_app
from jobs.evaluate import run

if __name__ == "__main__":
    run_app("evaluate", run, __doc__, with_keys=True)
