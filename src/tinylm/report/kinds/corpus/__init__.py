"""A corpus section: the baseline's model trained on another corpus (config `report: corpus`, with
`corpus` and usually `tokenizer`), against the baseline: loss curves, final losses, samples."""
from __future__ import annotations

from tinylm.pipeline.plan import BASELINE_RUN, PlannedSection, Planner, config_error
from tinylm.report.kinds import CURVES, Kind

NAME = "corpus"


def plan(planner: Planner, name: str, title: str) -> PlannedSection:
    runs = planner.experiment_runs(name)
    base_corpus = planner.config["baseline"]["corpus"]
    corpus = planner.experiment(name).get("corpus", base_corpus)
    if corpus == base_corpus:
        raise config_error(f"experiments.{name}.corpus",
                           f"a 'corpus' section compares another corpus with the baseline's "
                           f"({base_corpus!r}); set corpus (and tokenizer)")
    labels = dict(runs.labels)
    if runs.compare:
        labels[BASELINE_RUN] = f"{base_corpus} baseline"
    return PlannedSection(name, title, NAME, planner.described(name), labels, runs.baseline,
                          planner.generation(corpus, runs.own, grid=False))


KIND = Kind(NAME, plan, f"{__name__}.section", figures=CURVES, tables=("final_losses", "samples"),
            inputs=("generate", "train_text"), sweeps=True)
