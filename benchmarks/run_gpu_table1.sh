#!/usr/bin/env bash
# Paper Table 1 (ImageNet) inference speed on this machine's GPU: the 11 models of
# benchmarks/presets/table1_imagenet.yaml, each in its residual, BN-folded and plain (RM) form, at
# batch 128 with 50 timed batches (the paper's protocol) after 20 warm-up batches per form (the
# paper warms up with 50; the forms run interleaved, so the GPU has run 60 batches of the model
# before anything is timed, and 20 keep the whole script inside 8 minutes), one timed block each.
#   run 1: fp32 (IEEE, TF32 off) and tf32, NCHW (the paper's V100 has no TF32)
#   run 2: bf16, channels_last
# Results: benchmarks/results/<date>_table1_imagenet_cuda_{fp32-tf32,bf16_cl}.{md,json}, rewritten
# after every model, so a run stopped early keeps the models it finished.
#
# Time (estimated, no GPU measured yet): 11 models x 3 forms x 70 batches x 3 precisions = 6,930
# batches of 128. At the paper's V100 fp32 speeds (residual forms taken 1.3x slower than the printed
# deployed form) one precision's 70 batches per form take ~520 s on a V100. An H100/H200-class GPU is
# assumed ~3.5x a V100 in IEEE fp32, ~8x in TF32 and ~12x in bf16 channels_last: ~150 + 65 + 45 s of
# forward passes, plus ~50 s per run for start-up, building, converting and checking 11 models, plus
# cuDNN autotuning in the warm-up: ~6-7 minutes. On a V100 itself the script takes ~20 minutes.
# Extra arguments go to both runs, e.g. `bash benchmarks/run_gpu_table1.sh repeats=3`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script measures GPU figures only')"
COMMON=(preset=table1_imagenet device=cuda warmup=20 iters=50 repeats=1 out_dir=benchmarks/results)
"$PY" benchmark.py "${COMMON[@]}" 'precision=[fp32,tf32]' "$@"
"$PY" benchmark.py "${COMMON[@]}" precision=bf16 channels_last=true "$@"
