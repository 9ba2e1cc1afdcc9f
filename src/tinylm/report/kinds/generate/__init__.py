"""The generation section: text sampled from the best run of the learning-rate sweep (or the
baseline), at the main sampling setting and over a grid of temperatures and top-ps."""
from __future__ import annotations

from tinylm.pipeline.plan import BASELINE_RUN, PlannedSection, Planner
from tinylm.report.kinds import Kind

NAME = "generate"
SAMPLED_EXPERIMENT = "lr_sweep"  # the runs it samples from, with the baseline


def plan(planner: Planner, name: str, title: str) -> PlannedSection:
    pool = list(dict.fromkeys([*planner.experiment_runs(SAMPLED_EXPERIMENT).labels, BASELINE_RUN]))
    corpus = planner.config["baseline"]["corpus"]
    trained_on = "/".join(dict.fromkeys(planner.runs[run].corpus for run in pool))
    return PlannedSection(name, title, NAME, f"the non-diverged {trained_on} run with the lowest final validation loss",
                          dict.fromkeys(pool, ""), generation=planner.generation(corpus, pool, grid=True))


KIND = Kind(NAME, plan, f"{__name__}.section", tables=("samples", "sampling_settings"),
            inputs=("generate", "sampling_grid", "train_text"), runs=False, place=3, title="Generation",
            requires=(SAMPLED_EXPERIMENT,))
