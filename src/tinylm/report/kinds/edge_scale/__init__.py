"""The edge across scale: learning-rate sweeps of the baseline at several widths, batch sizes (tokens
per step) and norms, each refined until its edge of stability is bracketed closely, and how the
edge's distance above the best rate changes with the model's width. Its settings: config
experiments.edge_scale (config/edge.yaml)."""
from __future__ import annotations

from tinylm.pipeline.naming import setting_name, setting_text
from tinylm.pipeline.plan import LR, PlannedSection, Planner
from tinylm.report.kinds import Kind

NAME = "edge_scale"


def groups(planner: Planner, name: str) -> list[dict]:
    """The settings of each sweep: the overrides of one width, batch size and norm."""
    exp = planner.experiment(name)
    return [{**{f"model.{key}": value for key, value in width.items()}, "training.batch_size": batch,
             "model.norm": norm}
            for width in exp["widths"] for batch in exp["batch_sizes"] for norm in exp["norms"]]


def plan(planner: Planner, name: str, title: str) -> PlannedSection:
    exp, base = planner.experiment(name), planner.config["baseline"]
    labels: dict[str, str] = {}
    for group in groups(planner, name):
        # A sweep is named by its width, batch and norm (the rest of a width follows from d_model).
        named = [setting_text(key, group[key]) for key in ("model.d_model", "training.batch_size", "model.norm")]
        key = "-".join([name, *named])

        def run_at(rate: float, group: dict = group, key: str = key, named: list[str] = named) -> tuple[str, str]:
            rate_text = setting_text(LR, rate)
            run = planner.make(f"{key}-{rate_text}", base["tokenizer"], base["corpus"], {**group, LR: rate},
                               f"experiments.{name} ({' '.join(named)})", name, exp["resources"])
            return planner.add(run), " ".join([*named, rate_text])

        by_rate = planner.rate_sweep(key, name, exp["rates"], exp, f"{key}-{setting_name(LR)}=", run_at)
        labels.update(dict(by_rate.values()))
    return PlannedSection(name, title, NAME, exp["description"], labels, rate_sweeps=planner.sweeps_of(name),
                          compare_with=tuple(exp["compare_with"]))


KIND = Kind(NAME, plan, f"{__name__}.section", figures=("edge_vs_width",), tables=("edge_vs_scale",), place=4,
            experiment=True, title="The edge of stability across scale", requires=(NAME,))
