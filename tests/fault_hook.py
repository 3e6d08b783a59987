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
    """Send signal `signum` after optimizer step `step` (a preemption in the middle of a run) to this
    process, or with `to=agent` from rank 0 to its parent, the torchrun agent, which passes it on to
    every worker (as a scheduler's SIGTERM to a torchrun job does)."""

    def __init__(self, signum: int, step: int, to: str = "self"):
        self.signum, self.step, self.to = signum, step, to

    def after_step(self, trainer) -> None:
        if trainer.step == self.step and (self.to == "self" or trainer.rank == 0):
            os.kill(os.getpid() if self.to == "self" else os.getppid(), self.signum)
