"""A run's clock: wall time, training time and compile time, kept in its progress record."""
from __future__ import annotations

import time

from tinylm.training.progress import Progress


class RunClock:
    """Wall time, training time and compile time of a run, read only where the host has waited for
    the device.

    Training time is the sum of the stretches between such points, minus evaluations and
    checkpoints: `lap()` ends a stretch, `resume()` starts the next one after that work. A stretch
    ended by `lap_compile()` (a step that compiled its graphs) counts as compile time instead, so
    throughput never includes compilation.
    """

    def __init__(self, progress: Progress):
        self.progress = progress
        self.session_start = time.perf_counter() - progress.time_s
        self.stretch_start = time.perf_counter()
        self.line_mark = (progress.step, progress.train_time_s)  # at the last metrics line

    def _end_stretch(self) -> float:
        now = time.perf_counter()
        stretch, self.stretch_start = now - self.stretch_start, now
        self.progress.time_s = now - self.session_start
        return stretch

    def lap(self) -> None:
        self.progress.train_time_s += self._end_stretch()

    def lap_compile(self, steps: int) -> None:
        """End a stretch of compiling, which ran `steps` training steps."""
        p = self.progress
        p.compile_time_s += self._end_stretch()
        p.compile_steps += steps
        self.line_mark = (p.step, p.train_time_s)

    def resume(self) -> None:
        self.stretch_start = time.perf_counter()
        self.progress.time_s = self.stretch_start - self.session_start

    def tokens_per_s_since_line(self, tokens_per_step: int) -> float | None:
        step, train_s = self.line_mark
        p = self.progress
        self.line_mark = (p.step, p.train_time_s)
        if p.step <= step:  # no step since the mark but a compiling one
            return None
        return (p.step - step) * tokens_per_step / (p.train_time_s - train_s)
