#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded offline default: train a narrow
# RMNet-26x3_32 on the synthetic shapes dataset (CPU, a few minutes), convert the best checkpoint to
# a plain conv+ReLU chain, evaluate both forms (their accuracies must agree) and write the deploy
# artifact beside the checkpoint. Extra arguments are train.py overrides, e.g. epochs=2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python train.py experiment=quickstart "$@"
