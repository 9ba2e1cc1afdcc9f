"""The progress record of a run: the counters a checkpoint carries so a resumed run continues exactly.

Checkpoints store it as a plain dict (`to_dict`), loadable with `torch.load(weights_only=True)`.
Checkpoints written before the record existed hold the same keys, so they resume unchanged; a
dict that is not such a record (missing or unknown keys, wrong types) is refused with one line
that says to delete the checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("running", "completed", "early_stopped", "diverged")


@dataclass
class Progress:
    step: int = 0                            # optimizer steps done
    tokens: int = 0                          # training tokens of the updates kept
    time_s: float = 0.0                      # wall time of the run so far, all sessions
    train_time_s: float = 0.0                # of which training steps (no evaluation, checkpoints, compilation)
    compile_time_s: float = 0.0              # of which compiling: each session's first step (compiled runs)
    compile_steps: int = 0                   # steps whose time is compile time, not training time
    status: str = "running"                  # running | completed | early_stopped | diverged
    initial_loss: float | None = None        # the divergence rule's reference (DivergenceGuard)
    smoothed_loss: float | None = None       # its moving average of the training loss
    last_train_loss: float | None = None
    best_val_loss: float | None = None
    target_reached_step: int | None = None
    diverged_at_step: int | None = None
    metrics_lines: list[str] = field(default_factory=list)  # metrics.jsonl so far, for a resumed run
    started_at: str | None = None            # ISO 8601 UTC start of the first session

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike) -> Progress:
        """The record stored in checkpoint `source`; ValueError naming it when it is not one."""
        def refuse(why: str) -> ValueError:
            return ValueError(f"checkpoint {os.fspath(source)!r} has a progress record this version cannot "
                              f"resume ({why}); delete it to start the run over")

        if not isinstance(data, dict):
            raise refuse(f"a {type(data).__name__}, not a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise refuse(f"unknown key {unknown[0]!r}")
        missing = sorted({"step", "tokens", "status"} - set(data))
        if missing:
            raise refuse(f"missing {missing[0]!r}")
        progress = cls(**data)
        if not (isinstance(progress.step, int) and isinstance(progress.tokens, int)
                and progress.status in STATUSES and isinstance(progress.metrics_lines, list)):
            raise refuse("a counter has the wrong type or status is unknown")
        return progress
