"""benchmark.py: inference speed (img/s median and spread, latency), params, MACs, peak activation memory
and output check of the residual, BN-folded and plain form of each model, in eager PyTorch, torch.compile,
ONNX Runtime or ONNX Runtime INT8 (runtime=[...]): registry models with random
weights (models=[...], preset=...) or files (checkpoints=[...], timed at the size they were trained at).
The paper's protocol on GPU (batch 128, 50 warm-up + 50 timed); smaller defaults on CPU (it says so).

Examples:
  python benchmark.py models=[resnet50,rmnet50x6_32,repvgg_b2]
  python benchmark.py preset=table1_imagenet precision=bf16 channels_last=true
  python benchmark.py models=[resnet50] batch_size=[1,8,32,128]        # sweep (paper A.1)
  python benchmark.py checkpoints=[checkpoints/run/deploy.pt]          # a trained plain model
  python benchmark.py models=[rmnet26x3_32] stem=cifar export=[onnx,torchscript]
  python benchmark.py checkpoints=[checkpoints/run/best.pt] runtime=[eager,compile,onnxruntime,onnxruntime_int8] \
      fidelity=true                                                   # runtimes and INT8, ratios in one run
"""
from engine.cli import run_app
from jobs.benchmark import run

if __name__ == "__main__":
    run_app("benchmark", run, __doc__)
