"""Packages a feature needs, imported when it runs: a missing one is a one-line error that names it."""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingPackageError(ValueError):
    """A package a chosen feature needs is not installed (a user error: exit 2, one line)."""


def require(module: str, feature: str | None = None) -> ModuleType:
    """`import module`, or MissingPackageError naming the package, what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        need = f" for {feature}" if feature else ""
        raise MissingPackageError(f"the {module} package is needed{need} but cannot be imported ({e}); "
                                  f"install it: pip install {module} (requirements-lock.txt has the tested "
                                  f"version)") from None
