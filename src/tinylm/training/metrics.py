"""metrics.jsonl (one JSON line per logged step) and, optionally, the same records to Weights & Biases.

The lines written so far are also kept in the run's progress record, so a resumed run rewrites
metrics.jsonl exactly as the uninterrupted run would have it (Snakemake deletes a failed job's
outputs, and lines logged after the last checkpoint are redone on resume).
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tinylm.files import write_text_atomic


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/Infinity: a non-finite number is written as null."""
    return value if value is not None and math.isfinite(value) else None


class MetricsWriter:
    """Appends records to OUT_DIR/metrics.jsonl and to `lines`; mirrors them to W&B when asked."""

    def __init__(self, path: Path, lines: list[str], wandb_run=None):
        self.lines = lines
        write_text_atomic(path, "".join(line + "\n" for line in lines))
        self.file = open(path, "a")
        self.wandb_run = wandb_run

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        self.lines.append(line)
        self.file.write(line + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if v is not None}, step=record["step"])

    def close(self) -> None:
        self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def start_wandb(name: str, config: dict[str, Any], out_dir: Path):
    """A Weights & Biases run when the package is installed (WANDB_MODE=offline works); else None."""
    try:
        import wandb
    except ImportError:
        print("training.wandb is on but wandb is not installed (pip install 'tinylm[wandb]'); "
              "logging to metrics.jsonl only", file=sys.stderr)
        return None
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "tinylm"), name=name, config=config,
                      dir=str(out_dir), resume="allow", id=name)
