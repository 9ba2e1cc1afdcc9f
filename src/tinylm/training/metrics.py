"""metrics.jsonl (one JSON line per logged step, a `MetricsRecord`) and, optionally, the same records
to Weights & Biases.

The lines written so far are also kept in the run's progress record, so a resumed run rewrites
metrics.jsonl exactly as the uninterrupted run would have it (Snakemake deletes a failed job's
outputs, and lines logged after the last checkpoint are redone on resume).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tinylm.files import write_text_atomic


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/Infinity: a non-finite number is written as null."""
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class MetricsRecord:
    """One logged step. Losses are nats per token; a value that was not finite is None."""

    step: int
    tokens: int                      # training tokens so far
    time_s: float                    # wall time so far
    lr: float
    train_loss: float | None         # this step's batch
    grad_norm: float | None          # before clipping
    tokens_per_s: float | None       # since the previous line, over training steps only (None: only a compiling step)
    val_loss: float | None           # at evaluation steps
    mem_allocated_bytes: int
    mem_peak_bytes: int
    mem_total_bytes: int
    mem_percent: float


COLUMNS = tuple(f.name for f in dataclasses.fields(MetricsRecord))


class MetricsWriter:
    """Appends records to OUT_DIR/metrics.jsonl and to `lines`; mirrors them to W&B when asked."""

    def __init__(self, path: Path, lines: list[str], wandb_run=None):
        self.lines = lines
        write_text_atomic(path, "".join(line + "\n" for line in lines))
        self.file = open(path, "a")  # noqa: SIM115 (open for the whole run; close() closes it)
        self.wandb_run = wandb_run

    def write(self, record: MetricsRecord) -> None:
        values = dataclasses.asdict(record)
        line = json.dumps(values)
        self.lines.append(line)
        self.file.write(line + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in values.items() if v is not None}, step=record.step)

    def close(self) -> None:
        self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def start_wandb(name: str, config: dict, out_dir: Path):
    """A Weights & Biases run when the package is installed (WANDB_MODE=offline works); else None."""
    try:
        import wandb
    except ImportError:
        print("training.wandb is on but wandb is not installed (pip install 'tinylm[wandb]'); "
              "logging to metrics.jsonl only", file=sys.stderr)
        return None
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "tinylm"), name=name, config=config,
                      dir=str(out_dir), resume="allow", id=name)
