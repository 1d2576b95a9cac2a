"""Fault injection for the training tests, through the ``--callbacks`` hook (nothing of it ships).

Pass ``--callbacks tests.reliability.fault_callback:FaultCallback`` (``FAULT_SPEC``) and set
``DOLLY_TRAIN_FAULT=raise:RANK:STEP`` or ``kill:RANK:STEP`` in the environment the ranks inherit:
rank RANK raises (or SIGKILLs itself) at the end of optimizer step STEP. The hook builds the
callback with no arguments, so it reads its spec from the environment; a test may pass one.
"""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback

FAULT_ENV = "DOLLY_TRAIN_FAULT"
FAULT_SPEC = "tests.reliability.fault_callback:FaultCallback"
MODES = ("raise", "kill")


class FaultCallback(TrainerCallback):
    """Raise or SIGKILL on one rank at one step; does nothing without a spec."""

    def __init__(self, spec: str | None = None):
        spec = os.environ.get(FAULT_ENV, "") if spec is None else spec
        self.mode = None
        if spec:
            mode, rank, step = spec.split(":")
            if mode not in MODES:
                raise ValueError(f"{FAULT_ENV}={spec!r}: the mode must be one of {MODES}")
            self.mode, self.rank, self.step = mode, int(rank), int(step)

    def on_step_end(self, args, state, control, **kw):
        if self.mode and int(os.environ.get("RANK", "0")) == self.rank and state.global_step == self.step:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault on rank {self.rank} at step {self.step}")
