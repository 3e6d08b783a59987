"""A trainer hook that makes one rank fail once, for the fault tests: crash (exit status 1, as a
dying rank under torchrun) or SIGKILL, right after optimizer step `step`. A marker file in the run
directory keeps the restarted run from failing again.

    train.py ... +hooks.fault._target_=tests.fault_hook.InjectFault +hooks.fault.kind=kill +hooks.fault.step=3
"""
from __future__ import annotations

import os
import signal
import sys

from engine.hooks import Hook

KINDS = ("crash", "kill")


class InjectFault(Hook):
    def __init__(self, kind: str, step: int, rank: int = 0):
        if kind not in KINDS:
            raise ValueError(f"fault kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.step, self.rank = kind, step, rank

    def after_step(self, trainer) -> None:
        if trainer.step != self.step or trainer.rank != self.rank:
            return
        marker = os.path.join(trainer.run_dir, f".fault-injected-rank{self.rank}")
        if os.path.exists(marker):
            return
        open(marker, "w").close()
        print(f"fault injection: {self.kind} on rank {self.rank} after step {self.step}", file=sys.stderr, flush=True)
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)


class SendSignal(Hook):
    """Send this process signal `signum` after optimizer step `step` (a preemption in the middle of a run)."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    def after_step(self, trainer) -> None:
        if trainer.step == self.step:
            os.kill(os.getpid(), self.signum)
