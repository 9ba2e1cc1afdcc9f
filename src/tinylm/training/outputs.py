"""The folders a run writes to, and the name of every file in them.

    folder = RunFolder("results/runs/baseline")
    folder.summary, folder.metrics, folder.config, folder.model, folder.eval

`tinylm train` writes config.json, metrics.jsonl, summary.json and model.pt; `tinylm evaluate` (in
the pipeline) eval.json. Its resumable checkpoint goes to a folder of its own (`checkpoint_file`),
which a pipeline keeps out of its declared outputs, so that a killed job resumes. The rule files
name their files through this module too. Light on purpose: no torch.
"""
from __future__ import annotations

import os
from pathlib import Path

FILES = {"config": "config.json", "metrics": "metrics.jsonl", "summary": "summary.json", "model": "model.pt",
         "eval": "eval.json"}
# What a finished run leaves: a run that starts from scratch removes them first, so an older run's
# results can never be read as this one's.
RESULTS = ("summary", "model", "metrics", "eval")


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def file(self, kind: str) -> Path:
        """The path of one of FILES' kinds ("summary", "model", ...)."""
        return self.path / FILES[kind]

    @property
    def config(self) -> Path:
        return self.file("config")

    @property
    def metrics(self) -> Path:
        return self.file("metrics")

    @property
    def summary(self) -> Path:
        return self.file("summary")

    @property
    def model(self) -> Path:
        return self.file("model")

    @property
    def eval(self) -> Path:
        return self.file("eval")

    def remove_results(self) -> list[str]:
        """Delete an earlier run's results; returns the file names removed."""
        removed = []
        for kind in RESULTS:
            path = self.file(kind)
            if path.is_file():
                path.unlink()
                removed.append(path.name)
        return removed


def checkpoint_file(checkpoint_dir: str | os.PathLike) -> Path:
    """Where the resumable checkpoint of a run lives inside its checkpoint directory."""
    return Path(checkpoint_dir) / "checkpoint.pt"
