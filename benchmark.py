"""Inference benchmark of the residual, BN-folded and plain forms: `python benchmark.py --help`.

The logic is in bench/benchmark.py; the settings in conf/benchmark.yaml.
"""
from bench.benchmark import run
from engine.cli import run_app

if __name__ == "__main__":
    run_app("benchmark", run)
