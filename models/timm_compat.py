"""Register this project's models with timm, so `timm.create_model("rmnet50x6_32")` works.

Names timm already owns (its resnet50, repvgg_b1, ...) are left to timm: overwriting them on
import would silently change what other code gets from timm. Ours stay reachable through
`models.create_model`.
"""
from __future__ import annotations

import functools

from .registry import create_model, list_models

try:
    import timm
    from timm.models import register_model as _timm_register
except ImportError:  # timm is optional for everything but this shim
    timm = None


def _entrypoint(name: str):
    def build(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(f"no pretrained weights are distributed for {name}; load a file (this project's "
                             f"checkpoints and deploy artifacts, the RMNet and RepVGG authors' or torchvision's "
                             f"weights) with `artifacts.load`(PATH, name={name!r}).model, or evaluate it with "
                             f"python evaluate.py checkpoint=PATH model={name}")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return create_model(name, **kwargs)
    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    return build


@functools.cache
def register_with_timm() -> tuple[str, ...]:
    """Register every name timm does not already have; returns the names registered."""
    if timm is None:
        return ()
    taken = set(timm.list_models())
    added = tuple(n for n in list_models() if n not in taken)
    for name in added:
        _timm_register(_entrypoint(name))
    return added
