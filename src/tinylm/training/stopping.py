"""When a run stops: its budget, its target loss, divergence, or a SIGTERM.

Each rule is a small function of plain values, so the loop only asks and the rules are tested
on their own. The divergence rule runs on the device (`tinylm.training.divergence`).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def budget_reached(step: int, total_steps: int) -> bool:
    return step >= total_steps


def target_reached(val_loss: float, early_stop_loss: float | None) -> bool:
    """Early stop once the validation loss falls below the target (when there is one)."""
    return early_stop_loss is not None and val_loss < early_stop_loss


def checkpoint_due(step: int, checkpoint_interval: int, total_steps: int) -> bool:
    """Periodic checkpoints; the last step gets its own at the end of the run instead."""
    return step % checkpoint_interval == 0 and step < total_steps


class PreemptionFlag:
    """Set by SIGTERM (what Slurm sends before preemption), acted on at the end of the step."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, _signum, _frame) -> None:
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[PreemptionFlag]:
        """Catch SIGTERM while the block runs (signals can only be caught in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
