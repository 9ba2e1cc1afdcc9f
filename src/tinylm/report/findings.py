"""Findings about single runs that several kinds of section state: the per-run table, the best
run, and how a run diverged or why it did not.

Every sentence is built from the numbers (formatted as in the tables), never written by hand, so
the text follows the results when the configuration changes.
"""
from __future__ import annotations

import pandas as pd

from tinylm.report.runs import Run
from tinylm.report.seeds import differences, extremes, final_losses, mean_std
from tinylm.report.tables import Column, fmt_int, fmt_loss, fmt_rate, fmt_signed
from tinylm.training.summary import SUMMARY
from tinylm.training.summary import best_run as summary_best_run

# The summary fields of every run that a section's table may show (columns named as in Summary).
SUMMARY_COLUMNS = (SUMMARY.status, SUMMARY.steps, SUMMARY.params, SUMMARY.final_train_loss, SUMMARY.final_val_loss,
                   SUMMARY.best_val_loss, SUMMARY.target_reached_step, SUMMARY.tokens_per_s, SUMMARY.peak_mem_bytes,
                   SUMMARY.mem_percent)
# Columns over seeds (config `seeds`): the mean and sample standard deviation of the final validation
# loss and of the difference to the baseline (paired by seed), that difference's range, and the
# number of seeds.
VS_BASELINE = "val_vs_baseline"
VAL_MEAN, VAL_STD = f"{SUMMARY.final_val_loss}_mean", f"{SUMMARY.final_val_loss}_std"
VS_BASELINE_MEAN, VS_BASELINE_STD = f"{VS_BASELINE}_mean", f"{VS_BASELINE}_std"
VS_BASELINE_MIN, VS_BASELINE_MAX = f"{VS_BASELINE}_min", f"{VS_BASELINE}_max"
SEEDS = "seeds"


def runs_frame(runs: list[Run], baseline: Run | None = None) -> pd.DataFrame:
    """One row per run with every per-run number a section tabulates: the first seed's, and the
    mean and spread over every seed (tinylm.report.seeds)."""
    rows = []
    for run in runs:
        versus: list[float | None] = differences(run, baseline) if baseline else [None]
        rows.append({
            "run": run.label,
            "lr": run.lr,
            "batch_size": run.batch_size,
            "diverged": run.diverged,
            **{key: getattr(run.summary, key) for key in SUMMARY_COLUMNS},
            VS_BASELINE: versus[0],
            **dict(zip((VAL_MEAN, VAL_STD), mean_std(final_losses(run)))),
            **dict(zip((VS_BASELINE_MEAN, VS_BASELINE_STD), mean_std(versus) if baseline else (None, None))),
            **dict(zip((VS_BASELINE_MIN, VS_BASELINE_MAX), extremes(versus) if baseline else (None, None))),
            SEEDS: len(run.at_seeds),
            "d_ff": run.config.model.d_ff,
            "vocab_size": run.config.model.vocab_size,
        })
    return pd.DataFrame(rows).astype(object)  # keep None as None, ints as ints


def seed_columns(runs: list[Run], baseline: Run | None = None) -> tuple[list[Column], tuple[str, ...]]:
    """A comparison table's columns over seeds, as (shown, in the CSV only): against a baseline the
    difference to it is shown, else the final loss, with the number of seeds. With one seed every
    one of them goes into the CSV alone: they would repeat the first seed's numbers."""
    shown = [Column(VAL_MEAN, "final val loss, mean over seeds", fmt_loss), Column(VAL_STD, "its std", fmt_loss)]
    if baseline is not None:
        shown = [Column(VS_BASELINE_MEAN, f"val loss - {baseline.label}, mean over seeds", fmt_signed),
                 Column(VS_BASELINE_STD, "its std", fmt_loss)]
    shown.append(Column(SEEDS, "seeds", fmt_int))
    every = (VAL_MEAN, VAL_STD, VS_BASELINE_MEAN, VS_BASELINE_STD, VS_BASELINE_MIN, VS_BASELINE_MAX, SEEDS)
    if not any(run.replicas for run in runs):
        return [], every
    return shown, tuple(key for key in every if key not in {column.key for column in shown})


def best_run(runs: list[Run]) -> Run | None:
    """The run that did not diverge and ended lowest (the rule generation and export use too)."""
    return summary_best_run(runs, lambda run: run.summary)


def largest_spike(run: Run) -> tuple[float, float] | None:
    """(step, rise): the largest rise of the logged training loss above its lowest value so far."""
    losses = run.metrics[["step", "train_loss"]].dropna()
    if losses.empty:
        return None
    rise = losses["train_loss"] - losses["train_loss"].cummin()
    at = rise.idxmax()
    return float(losses.loc[at, "step"]), float(rise.loc[at])


def stability_text(run: Run) -> str:
    """Why a run that might have diverged did not: its largest loss spike against the trainer's threshold."""
    spike, reference = largest_spike(run), run.summary.divergence_reference_loss
    if run.diverged or spike is None or reference is None:
        return ""
    factor = float(run.config.training.divergence_factor)
    return (f"{run.label} did not diverge: its largest rise of the training loss above its lowest value so far "
            f"is {fmt_signed(spike[1])} (step {fmt_int(spike[0])}), far from the divergence threshold of "
            f"{factor:g}x the untrained model's smoothed loss ({fmt_loss(factor * reference)}).")


def first_logged_loss(run: Run) -> tuple[float, float] | None:
    """(step, training loss) of the first metrics line with a training loss; None when none has."""
    logged = run.metrics.dropna(subset=["train_loss"])
    if logged.empty:
        return None
    return float(logged["step"].iloc[0]), float(logged["train_loss"].iloc[0])


def divergence_text(run: Run, name: str) -> str:
    """"<name> diverged at step N (training loss L, lr R)", saying when the warm-up had not ended: a
    run that blows up while its rate is still a fraction of the configured one says little about
    that rate."""
    point = run.divergence_point()
    if point is None:
        return f"{name} diverged"
    step, loss = point
    logged = run.metrics[run.metrics["step"] <= step]
    lr = float(logged["lr"].iloc[-1]) if "lr" in logged and not logged["lr"].dropna().empty else None
    details = [f"training loss {fmt_loss(loss)}"]
    first = first_logged_loss(run)
    if first is not None and first[0] < step:
        details[0] += f", from {fmt_loss(first[1])} at step {fmt_int(first[0])}"
    if lr is not None:
        warming_up = step < int(run.config.optimizer.warmup_steps)
        details.append(f"lr {fmt_rate(lr)}" + (f", still warming up to {fmt_rate(run.lr)}" if warming_up else ""))
    return f"{name} diverged at step {fmt_int(step)} ({'; '.join(details)})"
