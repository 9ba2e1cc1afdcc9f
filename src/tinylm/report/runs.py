"""Loading finished runs for the report: config, metrics curve, summary, label and colour, and the
same runs at further seeds (their replicas, config `seeds`).

A run directory holds what `tinylm train` writes: `config.json` (a `RunConfig`), `metrics.jsonl`
(one `MetricsRecord` per logged step) and `summary.json` (a `Summary`). Everything the report draws
or tabulates comes from these three files, so changing report code never needs retraining.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.colors import to_hex

from tinylm.config import RunConfig
from tinylm.files import read_text, require_file
from tinylm.training.metrics import COLUMNS
from tinylm.training.outputs import RunFolder
from tinylm.training.summary import Summary

# Twenty colours that stay apart on white: matplotlib's tab10, then the dark half of tab20b/tab20c.
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
    "#e6550d", "#31a354", "#756bb1", "#636363",
]


@dataclass
class Run:
    """One training run as the report sees it."""

    label: str                 # the changed setting, e.g. "lr=3e-3"; names the run in legends and tables
    name: str                  # the run's name (its directory name), the key of its colour
    path: Path
    config: RunConfig          # as saved by `tinylm train`
    summary: Summary
    metrics: pd.DataFrame      # tinylm.training.metrics.COLUMNS, one row per logged step, NaN where not logged
    colour: str = PALETTE[0]
    replicas: list[Run] = field(default_factory=list)  # the same run at further seeds, in seed order

    @property
    def seed(self) -> int:
        return self.config.training.seed

    @property
    def at_seeds(self) -> list[Run]:
        """The run at every seed: itself (the first seed), then its replicas."""
        return [self, *self.replicas]

    @property
    def diverged(self) -> bool:
        return self.summary.diverged

    @property
    def lr(self) -> float:
        return self.config.optimizer.lr

    @property
    def batch_size(self) -> int:
        return self.config.training.batch_size

    @property
    def legend(self) -> str:
        return f"{self.label} (diverged)" if self.diverged else self.label

    def divergence_point(self, column: str = "train_loss") -> tuple[float, float] | None:
        """(step, last finite value of `column`) where a diverged run stopped; None otherwise."""
        if not self.diverged:
            return None
        finite = self.metrics[["step", column]].replace([math.inf, -math.inf], math.nan).dropna()
        if finite.empty:
            return None
        step = self.summary.diverged_at_step or float(finite["step"].iloc[-1])
        return float(step), float(finite[column].iloc[-1])


RUN_FILE_MISSING = "is the run finished?"


def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.jsonl -> DataFrame sorted by step; a malformed line is an error naming file and line."""
    rows = []
    for number, line in enumerate(read_text(path, "run metrics", hint=RUN_FILE_MISSING).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)  # Python's json reads NaN and Infinity, which a diverged run may log
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON: {error}") from None
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(f"{path}:{number}: expected an object with a 'step' key")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame = frame.apply(pd.to_numeric, errors="coerce")  # null -> NaN
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def load_run(label: str, run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} (label {label!r}) does not exist")
    folder = RunFolder(run_dir)
    config = RunConfig.load(require_file(folder.config, "run config", RUN_FILE_MISSING))
    summary = Summary.read(folder.summary, hint=RUN_FILE_MISSING)
    return Run(label=label, name=summary.name, path=run_dir, config=config, summary=summary,
               metrics=read_metrics(folder.metrics))


def load_runs(specs: list[tuple[str, str]], colour_order: list[str] | None = None,
              replicas: list[tuple[str, str]] | None = None) -> list[Run]:
    """Load runs from (label, run dir) pairs and give each a colour fixed by its name; `replicas`,
    (label, run dir) pairs of the same runs at further seeds, join the run of their label
    (`Run.replicas`) in its colour.

    `colour_order` lists every run name of the whole report in one fixed order; a run's colour is
    its position there, so the same run has the same colour in every section. Runs not listed
    follow in the order given.
    """
    labels = [label for label, _ in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"--run: label {repeated[0]!r} is given twice")
    runs = [load_run(label, run_dir) for label, run_dir in specs]
    order = list(colour_order or [])
    for run in runs:
        if run.name not in order:
            order.append(run.name)
    for run in runs:
        run.colour = PALETTE[order.index(run.name) % len(PALETTE)]
    by_label = {run.label: run for run in runs}
    for label, run_dir in replicas or []:
        if label not in by_label:
            raise ValueError(f"--replica {label!r} is not one of the --run labels: {', '.join(by_label)}")
        replica = load_run(label, run_dir)
        if replica.seed in [r.seed for r in by_label[label].at_seeds]:
            raise ValueError(f"--replica {label!r}: {run_dir} is at seed {replica.seed}, which {label!r} "
                             f"already has")
        replica.colour = by_label[label].colour
        by_label[label].replicas.append(replica)
    for run in runs:
        run.replicas.sort(key=lambda replica: replica.seed)
    return runs


def colour_by_order(runs: list[Run]) -> None:
    """Colours along a sequential colour map, for runs that differ in one ordered setting (batch size)
    and appear in one section only."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for i, run in enumerate(runs):
        for at_seed in run.at_seeds:
            at_seed.colour = to_hex(cmap(0.9 * i / max(len(runs) - 1, 1)))


def find_run(runs: list[Run], label: str | None) -> Run | None:
    if label is None:
        return None
    for run in runs:
        if run.label == label:
            return run
    raise ValueError(f"--baseline {label!r} is not one of the --run labels: {', '.join(r.label for r in runs)}")
