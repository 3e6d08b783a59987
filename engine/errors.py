"""User errors: bad input ends a command-line tool with one line and exit status 2, not a traceback.

The project's own error types (CheckpointError, DeployFormatError, ConversionError, ConfigError,
PruneError) are ValueErrors whose message names the problem and the fix, as are the plain
ValueErrors raised for bad arguments (a stem or class count that does not fit); DatasetError is a
FileNotFoundError and UnknownModelError a KeyError. A diverged run (NonFiniteLossError) ends the
same way: its message names the step and the checkpoint to resume; so does an output that cannot be
written (RunDirError, found before the work starts). Any other exception is a bug and keeps its
traceback. Ctrl-C (KeyboardInterrupt) ends with `interrupted` and exit status 130; the trainer
catches SIGINT itself to checkpoint first (engine/faults.py).

Under torchrun every rank meets the same bad input; only rank 0 prints the line (the others exit
with the same status silently), so the user reads one line, followed by torchrun's own report that
the workers exited with status 2.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Callable, TypeVar

from data.datasets import DatasetError
from models.registry import UnknownModelError

from .faults import NonFiniteLossError, RunDirError

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, DatasetError, UnknownModelError, NonFiniteLossError,
                                            RunDirError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT

F = TypeVar("F", bound=Callable)


def message(error: BaseException) -> str:
    """The error's own text on one line (a KeyError's str() would quote it)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def report(error: BaseException | str) -> None:
    """`error: <message>` on stderr (a string as it is), from rank 0 of a torchrun job only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(error if isinstance(error, str) else f"error: {message(error)}", file=sys.stderr)


def exit_on_user_error(fn: F) -> F:
    """Wrap a CLI entry point: a user error becomes `error: <message>` on stderr and exit status 2, Ctrl-C
    becomes `interrupted` and 130 (128 + SIGINT, as a shell reports it) instead of Python's traceback.

    Works inside `@hydra.main` too (place it below the decorator): SystemExit is not an Exception,
    so Hydra passes it through instead of printing its own traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            report(e)
            raise SystemExit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            report("interrupted")
            raise SystemExit(EXIT_INTERRUPTED) from None
    return wrapper  # type: ignore[return-value]
