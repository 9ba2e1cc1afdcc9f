"""The learning-rate sweep: the baseline at several rates, where training fails (diverges or stops
learning) and how far the best rate lies below that edge. Its settings: config experiments.lr_sweep."""
from __future__ import annotations

from tinylm.pipeline.plan import PlannedSection, Planner
from tinylm.report.kinds import CURVES, Kind

NAME = "lr_sweep"


def plan(planner: Planner, name: str, title: str) -> PlannedSection:
    runs = planner.experiment_runs(name)
    return PlannedSection(name, title, NAME, planner.experiment(name).get("description", ""), dict(runs.labels),
                          runs.baseline, rate_sweeps=planner.sweeps_of(name))


KIND = Kind(NAME, plan, f"{__name__}.section", figures=("lr_schedule", *CURVES, "final_loss_vs_lr"),
            tables=("lr_sweep",), place=1, experiment=True, sweeps=True, title="Learning rate",
            requires=(NAME,))
