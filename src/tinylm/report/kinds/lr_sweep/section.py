"""The learning-rate sweep section: which rates fail (diverge or stop learning), the edge of
stability above the best rate, the schedules and loss curves, and the final loss against the rate."""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.transforms import blended_transform_factory

from tinylm.report import figures
from tinylm.report.edge import DIVERGED, TRAINS, EdgeOfStability, criterion_text, edge_of_stability
from tinylm.report.findings import divergence_text, runs_frame, seed_columns, stability_text
from tinylm.report.runs import Run
from tinylm.report.section import Inputs, Section
from tinylm.report.seeds import final_losses, mean_std, same_at_every_seed, table_note
from tinylm.report.tables import Column, fmt_int, fmt_loss, fmt_rate, fmt_signed
from tinylm.training.summary import SUMMARY

# Where the report's reader finds why the edge lies where it does at this scale.
EDGE_STUDY = ("How the edge moves with the model's width and the tokens per step is the subject of "
              "config/edge.yaml (its section: the edge across scale).")

def lr_sweep_text(runs: list[Run], edge: EdgeOfStability) -> str:
    rates = sorted(r.lr for r in runs)
    failed = sorted((r for r in runs if edge.outcomes[r.label] != TRAINS), key=lambda r: r.lr)
    parts = [f"The sweep trained {len(runs)} learning rates from {fmt_rate(rates[0])} to {fmt_rate(rates[-1])}.",
             criterion_text(edge, runs)]
    if failed:
        described = []
        for run in failed:
            if edge.outcomes[run.label] == DIVERGED:
                described.append(divergence_text(run, fmt_rate(run.lr)))
            else:
                described.append(f"{fmt_rate(run.lr)} stopped learning (final validation loss "
                                 f"{fmt_loss(run.summary.final_val_loss)})")
        parts.append(f"{len(failed)} of {len(runs)} failed: {'; '.join(described)}.")
    else:
        parts.append("None failed.")
    if edge.best is not None:
        parts.append(f"The best rate is {fmt_rate(edge.best.lr)}, with a final validation loss of "
                     f"{fmt_loss(edge.best.summary.final_val_loss)}.")
    if edge.smallest_failing is not None and edge.best is not None:
        if edge.largest_stable is not None and edge.largest_stable is not edge.best:
            parts.append(f"The largest rate that still trains, {fmt_rate(edge.largest_stable.lr)}, ends at "
                         f"{fmt_loss(edge.largest_stable.summary.final_val_loss)}, above the best.")
            parts.append(stability_text(edge.largest_stable))
    elif edge.best is not None:
        largest = max(runs, key=lambda r: r.lr)
        parts.append(f"The edge of stability lies above the largest rate tried, {fmt_rate(rates[-1])}"
                     + (f": it ends at {fmt_loss(largest.summary.final_val_loss)}, "
                        f"{fmt_signed(largest.summary.final_val_loss - edge.best.summary.final_val_loss)} "
                        f"from the best, below the failure threshold of {fmt_loss(edge.threshold)}."
                        if edge.threshold is not None and largest.summary.final_val_loss is not None
                        and edge.best.summary.final_val_loss is not None else "."))
    else:
        parts.append(f"Every rate diverged: the edge of stability lies below {fmt_rate(rates[0])}.")
    parts.append(seeds_text(runs))
    parts.append(EDGE_STUDY)
    parts.append(target_text(runs))
    return " ".join(p for p in parts if p)


def seeds_text(runs: list[Run]) -> str:
    """Whether the sweep at each seed alone has the same best rate and the same failing rates."""
    def finding(at_seed: list[Run]) -> tuple[float | None, tuple[float, ...]]:
        edge = edge_of_stability(at_seed)
        return (edge.best.lr if edge.best else None,
                tuple(sorted(r.lr for r in at_seed if edge.outcomes[r.label] != TRAINS)))

    def describe(found: tuple[float | None, tuple[float, ...]]) -> str:
        best, failing = found
        rates = [fmt_rate(rate) for rate in failing]
        fails = ("no rate fails" if not rates else f"{rates[0]} fails" if len(rates) == 1
                 else f"{', '.join(rates[:-1])} and {rates[-1]} fail")
        return f"the best rate is {fmt_rate(best)}, and {fails}"

    return same_at_every_seed(runs, finding, describe)


def target_text(runs: list[Run]) -> str:
    targets = {r.summary.early_stop_loss for r in runs} - {None}
    if len(targets) != 1:
        return ""
    target = targets.pop()
    reached = sorted(((step, r) for r in runs if (step := r.summary.target_reached_step) is not None),
                     key=lambda pair: pair[0])
    if not reached:
        return f"No run reached the target validation loss of {fmt_loss(target)}."
    first_step, first = reached[0]
    return (f"{len(reached)} of {len(runs)} runs reached the target validation loss of {fmt_loss(target)}; "
            f"{first.label} first, at step {fmt_int(first_step)}.")


# ---- figures

def lr_schedule(runs: list[Run], title: str = "") -> plt.Figure:
    """The learning rate each run actually used, per step (log scale: the rates span decades)."""
    fig, ax = plt.subplots(figsize=figures.SINGLE, layout="constrained")
    for run in runs:
        xs, ys = figures.finite_points(run, "step", "lr")
        keep = ys > 0
        ax.plot(xs[keep], ys[keep], label=run.legend, **figures.line_style(run, None))
        if run.diverged and keep.any():
            figures.x_mark(ax, run, xs[keep][-1], ys[keep][-1])
    ax.set_yscale("log")
    ax.set_xlabel(figures.X_AXES["step"])
    ax.set_ylabel("learning rate")
    ax.set_title(title or "Learning-rate schedule (warm-up, then cosine decay)")
    ax.legend(loc="best")
    return fig


def final_loss_vs_lr(runs: list[Run], best: Run | None, smallest_failing: Run | None) -> plt.Figure:
    """Final validation loss per learning rate; diverged rates marked by an x at the top, failing
    rates (diverged or stopped learning) shaded. With several seeds a rate's point is its mean over
    seeds with a bar of one standard deviation, each seed a small dot, and a rate that diverged at
    any seed is marked by the x."""
    fig, ax = plt.subplots(figsize=figures.SINGLE, layout="constrained")
    centre = {run.name: mean_std(final_losses(run)) for run in runs}
    means = {name: mean for name, (mean, _) in centre.items() if mean is not None}
    stable = sorted((r for r in runs if r.name in means), key=lambda r: r.lr)
    if stable:
        ax.plot([r.lr for r in stable], [means[r.name] for r in stable], color="0.6", linewidth=1, zorder=1)
    for run in stable:
        mean, std = means[run.name], centre[run.name][1]
        point: dict[str, Any] = {"marker": "o", "markersize": 8, "linestyle": "none", "color": run.colour,
                                 "label": run.legend, "zorder": 3}
        if std is None:
            ax.plot([run.lr], [mean], **point)
        else:
            ax.errorbar([run.lr], [mean], yerr=[std], capsize=4, **point)
    for run in runs:
        seeds = [loss for loss in final_losses(run) if loss is not None] if run.replicas else []
        ax.plot([run.lr] * len(seeds), seeds, marker=".", markersize=4, linestyle="none", color="0.2", zorder=4)
    top_edge = blended_transform_factory(ax.transData, ax.transAxes)
    for run in runs:
        if centre[run.name][0] is None:
            ax.plot([run.lr], [0.93], transform=top_edge, marker="x", markersize=11, markeredgewidth=2.5,
                    linestyle="none", color=run.colour, label=run.legend, zorder=3)
    if smallest_failing is not None:
        ax.axvspan(smallest_failing.lr, ax.get_xlim()[1] * 10, color="#d62728", alpha=0.07, zorder=0)
        ax.annotate("fails →", xy=(smallest_failing.lr, 0.99), xycoords=top_edge, fontsize=8,
                    color="#d62728", xytext=(-6, 0), textcoords="offset points", ha="right", va="top")
    if best is not None and centre[best.name][0] is not None:
        ax.annotate(f"best: {best.label}", xy=(best.lr, centre[best.name][0]), xytext=(0, -16),
                    textcoords="offset points", ha="center", fontsize=8)
    rates = [r.lr for r in runs]
    ax.set_xscale("log")
    ax.set_xlim(min(rates) / 1.6, max(rates) * 1.6)
    if stable:
        # a run with a mean has every seed's loss
        values = [loss for r in stable for loss in final_losses(r) if loss is not None]
        values += [means[r.name] + sign * (centre[r.name][1] or 0) for r in stable for sign in (-1, 1)]
        pad = 0.15 * (max(values) - min(values)) or 0.1
        ax.set_ylim(min(values) - 2 * pad, max(values) + 3 * pad)  # room for the x marks on top
    ax.set_xlabel("peak learning rate (log scale)")
    ax.set_ylabel(f"final validation loss {figures.LOSS_UNIT}")
    ax.set_title("Final validation loss against learning rate")
    fig.legend(loc="outside lower center", ncol=min(len(runs), 5), frameon=False)
    return fig


def build(section: Section, inputs: Inputs) -> None:
    runs = sorted(inputs.runs, key=lambda r: r.lr)
    edge = edge_of_stability(runs)
    section.paragraph(lr_sweep_text(runs, edge))
    section.figure(lr_schedule(runs), "lr_schedule", "Learning rate per step for each run")
    section.curves(runs, None, "Learning-rate sweep")
    seeds = "; points: the mean over seeds, bars: one standard deviation, dots: each seed" \
        if any(r.replicas for r in runs) else ""
    section.figure(final_loss_vs_lr(runs, edge.best, edge.smallest_failing), "final_loss_vs_lr",
                   f"Final validation loss against learning rate (x: diverged; shaded: failing rates{seeds})")
    frame = runs_frame(runs)
    frame["outcome"] = [edge.outcomes[label] for label in frame["run"]]
    spread, csv_only = seed_columns(runs)
    section.table(frame, [
        Column("run", "run"), Column("lr", "learning rate", fmt_rate), Column(SUMMARY.status, "status"),
        Column(SUMMARY.final_val_loss, "final val loss", fmt_loss),
        Column(SUMMARY.best_val_loss, "best val loss", fmt_loss),
        Column(SUMMARY.target_reached_step, "target reached at step", fmt_int), Column("diverged", "diverged"),
        Column(SUMMARY.steps, "steps", fmt_int), Column("outcome", "outcome"), *spread,
    ], "lr_sweep", "Learning-rate sweep: final and best validation loss, step at which the target was reached, "
                   f"and whether the rate trains, diverged or stopped learning{table_note(runs)}", csv_only)
