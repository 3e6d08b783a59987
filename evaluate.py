"""Evaluate a checkpoint in its residual and plain forms: `python evaluate.py --help`.

The logic is in engine/eval_checkpoint.py; the settings in conf/evaluate.yaml.
"""
from engine.cli import run_app
from engine.eval_checkpoint import run

if __name__ == "__main__":
    run_app("evaluate", run)
