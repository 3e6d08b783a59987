#!/usr/bin/env bash
# Paper Table 1 (ImageNet) inference speed on this machine's GPU, with the paper's protocol
# (batch 128, 50 warm-up + 50 timed iterations, x3 repeats): once in fp32 (IEEE, TF32 off) and once
# in bf16 + channels_last. Each model runs in its residual, BN-folded and plain (RM) form.
# Results: benchmarks/results/<date>_table1_imagenet_cuda_{fp32,bf16_cl}.{md,json}
# Extra arguments go to both runs, e.g. `bash benchmarks/run_gpu_table1.sh repeats=5`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script measures GPU figures only')"
"$PY" benchmark.py preset=table1_imagenet device=cuda precision=fp32 out_dir=benchmarks/results "$@"
"$PY" benchmark.py preset=table1_imagenet device=cuda precision=bf16 channels_last=true out_dir=benchmarks/results "$@"
