"""A variant section: the baseline with something changed (config `report: variant`, the default of
an experiment), against the baseline: loss curves and final losses."""
from __future__ import annotations

from tinylm.pipeline.plan import PlannedSection, Planner
from tinylm.report.kinds import Kind

NAME = "variant"


def plan(planner: Planner, name: str, title: str) -> PlannedSection:
    runs = planner.experiment_runs(name)
    return PlannedSection(name, title, NAME, planner.described(name), dict(runs.labels), runs.baseline,
                          rate_sweeps=planner.sweeps_of(name))


KIND = Kind(NAME, plan, f"{__name__}.section", figures=("loss_vs_step",), tables=("final_losses",), sweeps=True)
