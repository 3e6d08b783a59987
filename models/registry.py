"""Model registry: one short registered function per variant, timm style.

`create_model(name, num_classes=1000, stem="imagenet", **kwargs)` builds a registered model;
`list_models(pattern)` lists names. The stem is always explicit: "imagenet" (224x224 input,
stride-4 or stride-2 stem) or "cifar" (32x32 input, stride-1 stem); it is never guessed.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Callable

import torch.nn as nn

STEMS = ("imagenet", "cifar")
INPUT_SIZE = {"imagenet": 224, "cifar": 32}

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}
_STEMS: dict[str, tuple[str, ...]] = {}


class UnknownModelError(KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_model(fn: Callable[..., nn.Module] | None = None, *, stems: tuple[str, ...] = STEMS):
    """Register `fn` under its own name; `stems` lists the stems the variant exists for.

    Use as `@register_model` or `@register_model(stems=("cifar",))`.
    """
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
        _STEMS[name] = tuple(stems)
        return fn
    return deco(fn) if fn is not None else deco


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def model_family(name: str) -> str:
    _check_name(name)
    return _FAMILY[name]


def model_stems(name: str) -> tuple[str, ...]:
    """Stems `name` can be built with; the first is its natural one."""
    _check_name(name)
    return _STEMS[name]


def _check_name(name: str) -> None:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `python -m models` lists all {len(_MODELS)} models.")


def check_stem(stem: str) -> str:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    return stem


def create_model(name: str, num_classes: int = 1000, stem: str = "imagenet", **kwargs) -> nn.Module:
    _check_name(name)
    check_stem(stem)
    if stem not in _STEMS[name]:
        raise ValueError(f"{name} has no {stem!r} stem; it exists with: {', '.join(_STEMS[name])}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        return _MODELS[name](num_classes=num_classes, stem=stem, **kwargs)
    except TypeError as e:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if unexpected is None:
            raise
        raise ValueError(f"{name} ({_FAMILY[name]} family) takes no argument {unexpected.group(1)!r} "
                         f"(model.kwargs.{unexpected.group(1)})") from None
