"""The batch-size section: the baseline at several batch sizes on one token budget, up to the
largest batch the max-batch probe finds fits in memory. Its settings: config experiments.batch_size."""
from __future__ import annotations

import math

from tinylm.pipeline.plan import BASELINE_RUN, PlannedRun, PlannedSection, Planner
from tinylm.report.kinds import CURVES, Kind

NAME = "batch_size"


def batch_sizes(planner: Planner) -> tuple[list[int], bool]:
    """(batch sizes to train, whether the probe's answer is still missing)."""
    exp = planner.experiment(NAME)
    sizes = sorted(set(exp["batch_sizes"]))
    if not exp["find_max"]:
        return sizes, False
    if planner.largest_batch is None:
        return [b for b in sizes if b <= exp["max_batch"]], True
    return sorted({b for b in sizes if b <= planner.largest_batch} | {planner.largest_batch}), False


def batch_size_run(planner: Planner, batch: int) -> PlannedRun:
    """The baseline at `batch` with the section's token budget (whole steps), scaled lr, and
    intervals fixed in tokens so every batch size is logged, evaluated and warmed up over the
    same share of the budget."""
    exp = planner.experiment(NAME)
    base = planner.baseline
    scale = batch / base.training.batch_size
    exponent = {"constant": 0.0, "sqrt": 0.5, "linear": 1.0}[exp["lr_scaling"]]
    lr = min(base.optimizer.lr * scale ** exponent, float(exp["max_lr"] or math.inf))
    per_tokens = lambda steps: max(1, round(steps / scale))  # noqa: E731
    steps = math.ceil(exp["max_tokens"] / (batch * base.model.context_length))
    overrides = {
        "training.batch_size": batch, "training.max_steps": steps, "training.max_tokens": None,
        "optimizer.lr": lr,
        "optimizer.warmup_steps": min(per_tokens(base.optimizer.warmup_steps), steps // 2),
        "training.eval_interval": per_tokens(base.training.eval_interval),
        "training.log_interval": per_tokens(base.training.log_interval),
        "training.checkpoint_interval": per_tokens(base.training.checkpoint_interval),
    }
    b = planner.config["baseline"]
    return planner.make(f"{NAME}-batch={batch}", b["tokenizer"], b["corpus"], overrides,
                        f"experiments.{NAME} (batch={batch})", NAME, exp["resources"])


def plan(planner: Planner, name: str, title: str) -> PlannedSection:
    exp = planner.experiment(name)
    if exp["find_max"]:
        planner.probe = {"max_batch": exp["max_batch"], "cpu_memory_budget_mb": exp["cpu_memory_budget_mb"]}
    sizes, pending = batch_sizes(planner)
    labels = {planner.add(batch_size_run(planner, b)): f"batch={b}" for b in sizes}
    return PlannedSection(name, title, NAME, exp.get("description", ""), labels,
                          BASELINE_RUN if BASELINE_RUN in labels else None, pending_probe=pending)


KIND = Kind(NAME, plan, f"{__name__}.section", figures=("memory", *CURVES), tables=("batch_size",),
            inputs=("max_batch",), place=2, experiment=True, title="Batch size",
            requires=(NAME,))
