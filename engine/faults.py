"""What the trainer does when things go wrong: preemption signals, non-finite losses, unwritable
run directories (a check every job runs on its outputs before its work).

Checkpoints themselves are written atomically (rm.io.atomic_save), so a crash or kill at any
moment leaves the previous last.pt intact and `resume=auto` continues from it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
NONFINITE_MODES = ("stop", "skip")   # nonfinite_loss: end the run at a NaN/Inf loss, or skip that update


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message names the step, its learning rate and the
    last good checkpoint."""


class RunDirError(OSError):
    """The run directory cannot be written (permissions, full disk)."""


class StopSignal:
    """SIGTERM/SIGINT ask the trainer to stop (it checkpoints at its next meeting point, first thing,
    and exits with 128 + signal number); a second signal exits at once, and so does a run that has
    not written its checkpoint and exited within `grace_s` of the signal (a rank blocked in a
    collective on a dead peer; torchrun's agent sends SIGTERM and waits 30 s before SIGKILL, so the
    deadline covers the steps to the next meeting point, a validation under way and the save).
    Installed only in the main thread, restored on exit. `announce`: print the notice (one rank of a
    torchrun job: the agent signals every worker at once)."""

    def __init__(self, grace_s: float = 25.0, announce: bool = True) -> None:
        self.signum: int | None = None
        self.grace_s, self.announce = grace_s, announce
        self._previous: dict[int, Any] = {}
        self._deadline: threading.Timer | None = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._deadline is not None:
            self._deadline.cancel()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            print(f"\nsecond {signal.Signals(signum).name}: exiting now without a checkpoint; "
                  f"the last one written is intact", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        self._deadline = threading.Timer(self.grace_s, self._expire)
        self._deadline.daemon = True
        self._deadline.start()
        if self.announce:
            print(f"\n{signal.Signals(signum).name} received: stopping and writing a checkpoint (send it again "
                  f"to exit at once)", file=sys.stderr, flush=True)

    def _expire(self) -> None:
        print(f"no checkpoint written within {self.grace_s:g} s of the signal: exiting without one; the last "
              f"one written is intact", file=sys.stderr, flush=True)
        os._exit(self.exit_code)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


def probe_run_dir(run_dir: str, setting: str = "output_dir", what: str = "the run directory") -> None:
    """Write, flush and fsync a small file in `run_dir`; RunDirError says why not and names the `setting`
    to change. Every job calls it (or `probe_output_file`) before its work, so that an unwritable output
    fails at once rather than when the result is written. Folders it had to make are removed again, so
    that a job refused later for another reason leaves nothing behind."""
    made, folder = [], os.path.abspath(run_dir)
    while not os.path.exists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise RunDirError(f"cannot write to {what} {run_dir}: {folder} is a file, not a folder; choose another "
                          f"{setting}")
    try:
        os.makedirs(run_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-probe-") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunDirError(f"cannot write to {what} {run_dir} ({e.strerror or e}); free disk space, "
                          f"fix its permissions or choose another {setting}") from None
    finally:
        for folder in made:   # deepest first; one another process has filled meanwhile stays
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def probe_output_file(path: str, setting: str) -> None:
    """`probe_run_dir` for a job that writes one file `path` (set by `setting`), which must not be a folder."""
    if os.path.isdir(path):
        raise RunDirError(f"{setting}={path} is a folder: give the path of the file to write")
    probe_run_dir(os.path.dirname(os.path.abspath(path)), setting, "the output folder")
