"""Convert a residual model into a verified plain deploy artifact: `python convert.py --help`.

The logic is in engine/convert_checkpoint.py; the settings in conf/convert.yaml.
"""
from engine.cli import run_app
from engine.convert_checkpoint import run

if __name__ == "__main__":
    run_app("convert", run)
