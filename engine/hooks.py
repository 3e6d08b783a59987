"""Training hooks: extra loss terms, post-backward gradient edits and per-step actions, configured by name.

    @register_hook("bn_l1")
    class BNL1(Hook):
        def __init__(self, sr: float): ...
        def after_backward(self, model): ...

`hooks: {bn_l1: {sr: 1e-4}}` in the train config (CLI: `+hooks.bn_l1.sr=1e-4`) builds
`BNL1(sr=1e-4)`. A hook that is not registered is named by import path, Hydra's way
(`+hooks.mine._target_=package.module.MyHook +hooks.mine.x=1`), or as the name
"package.module:Class", so other packages add hooks without touching the trainer. The trainer calls
`loss(model, logits, targets)` for every hook and adds the returned tensors to the loss,
`after_backward(model)` once gradients are final (unscaled, all-reduced, before clipping and the
step), and `after_step(trainer)` after every optimizer step (`trainer.step`, `.rank`, `.run_dir`,
`.model` describe where the run is). `param_groups(model)`, asked once before the optimizer is
built, returns optimizer groups with settings of their own (`{"params": [...], "weight_decay": 0.0}`);
their parameters leave the default groups. A hook with state of its own (ResRep's masks) returns it
from `state_dict()`: checkpoints hold it under "hooks" by the hook's name, and a resumed run hands it
back to `load_state_dict(state)` after `param_groups`.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn


class Hook:
    """Base class: override any method; the defaults do nothing."""

    def param_groups(self, model: nn.Module) -> list[dict]:
        return []

    def loss(self, model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module) -> None:
        return None

    def after_step(self, trainer: Any) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


_HOOKS: dict[str, Callable[..., Hook]] = {}


def register_hook(name: str) -> Callable:
    def deco(factory: Callable[..., Hook]) -> Callable[..., Hook]:
        if name in _HOOKS:
            raise ValueError(f"hook {name!r} is registered twice")
        _HOOKS[name] = factory
        return factory
    return deco


def list_hooks() -> list[str]:
    return sorted(_HOOKS)


def _import(path: str, name: str) -> Callable[..., Hook]:
    module, _, attr = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"hook {name!r} cannot be imported from {path!r}: {e}") from None


def _factory(name: str, target: str | None) -> Callable[..., Hook]:
    if target is not None:
        return _import(target, name)
    if name in _HOOKS:
        return _HOOKS[name]
    if ":" in name:
        return _import(name, name)
    raise ValueError(f"unknown hook {name!r}; registered hooks: {', '.join(list_hooks()) or 'none'}, or give an "
                     f"import path (+hooks.{name}._target_=package.module.Class)")


def build_hooks(cfg: Mapping[str, Any] | None) -> dict[str, Hook]:
    """{name: hook} from {name: {kwarg: value}} (None or {} builds none), in the config's order."""
    hooks = {}
    for name, kwargs in (cfg or {}).items():
        kwargs = dict(kwargs or {})
        factory = _factory(name, kwargs.pop("_target_", None))
        try:
            hooks[name] = factory(**kwargs)
        except TypeError as e:
            raise ValueError(f"hook {name!r}: bad arguments {kwargs}: {e}") from None
    return hooks


@register_hook("bn_l1")
class BNL1(Hook):
    """Network slimming (Liu et al. 2017): L1 penalty `sr` on BatchNorm scales, applied as the
    subgradient sr * sign(gamma) added to their gradients (the loss value itself is not changed)."""

    def __init__(self, sr: float = 1e-4):
        if sr < 0:
            raise ValueError(f"bn_l1 sr must be >= 0, got {sr}")
        self.sr = sr

    def scales(self, model: nn.Module) -> list[nn.Parameter]:
        """The penalised scales (a subclass penalises others: prune.penalty's mask convs)."""
        return [m.weight for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.grad is not None]

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        for w in self.scales(model):
            w.grad.add_(torch.sign(w), alpha=self.sr)
