#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded offline default.
# Until the trainer lands this is the converter demo: build RMNet-26x3_32, convert it, verify it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python convert.py --model rmnet26x3_32 --stem cifar --num-classes 10 \
  --out checkpoints/demo/rmnet26x3_32_deploy.pt "$@"
