"""train.py's job: the config read into TrainSettings once, then engine.stages' build, train
and finish."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

import engine.distributed as D
from engine.settings import TrainSettings
from engine.stages import build, train


def run(cfg: DictConfig) -> dict[str, Any]:
    """train.py: build, train, convert and evaluate; the process group lives for the whole job."""
    settings = TrainSettings.from_cfg(cfg)
    D.setup(settings.device, settings.dist_timeout_min)
    try:
        return train(settings, *build(settings))
    finally:
        D.cleanup()
