"""Helpers the tests share (a module of its own: test modules never import each other)."""
from __future__ import annotations

import contextlib
import io
import os
import runpy
import sys

import torch.nn as nn

import rm
from engine.config import check_overrides
from rm.verify import randomize_bn  # noqa: F401  (the tests' name for it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOAT64_TOL, FLOAT32_TOL = 1e-10, 1e-5

# resnet18 at widths 8..32 on 16x16 synthetic images: a few ms per step on one CPU core.
TINY = ["model=resnet18", "model.kwargs.widths=[8,8,16,16]", "data=synthetic", "data.input_size=16",
        "data.train_size=256", "data.val_size=101", "batch_size=16", "workers=0", "progress=false",
        "sched=constant", "optim.lr=0.05", "optim.lr_batch=null", "log_every_steps=1"]


def tiny_config(tmp_path, *overrides: str, config_name: str = "train"):
    """The composed, checked config of a tiny training run writing under `tmp_path`."""
    return check_overrides([*TINY, f"output_dir={tmp_path}", *overrides], config_name=config_name)


def check_exact(model: nn.Module, size: int, **kw) -> dict:
    """Convert `model` and assert the plain model's outputs equal its own (float64 and float32)."""
    report = rm.verify_conversion(model, input_size=size, **kw)
    assert report["float64"]["max_rel"] < FLOAT64_TOL, report
    assert report["float32"]["max_rel"] < FLOAT32_TOL, report
    return report


def markdown_table(markdown: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table whose header line starts with `header_start`, keyed by header."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def run_script(name: str, argv: list[str]) -> tuple[int, str, str]:
    """`python <name>.py ARGV` in this process, exactly as the script runs from a shell (its own
    `if __name__ == "__main__"` block): (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = [f"{name}.py", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(os.path.join(ROOT, f"{name}.py"), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def build_tiny(tmp_path, *overrides: str):
    """engine.stages.build of tiny_config: (model, spec)."""
    from engine.settings import TrainSettings
    from engine.stages import build

    return build(TrainSettings.from_cfg(tiny_config(tmp_path, *overrides)))


def trainer_for(cfg, **loaders):
    """The Trainer of a composed train config, with the model it builds (as train.py makes them)."""
    from engine.settings import TrainSettings
    from engine.stages import build
    from engine.trainer import Trainer

    settings = TrainSettings.from_cfg(cfg)
    return Trainer(settings, *build(settings), **loaders)
