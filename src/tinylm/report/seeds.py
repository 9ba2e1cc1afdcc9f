"""Runs over seeds (config `seeds`): the mean and spread of a final loss, its difference to the
baseline paired by seed, and whether a finding holds at every seed.

A run carries its replicas at further seeds (`Run.replicas`). With one seed every statistic is the
run's own number with no spread, and the texts here say nothing, so that a one-seed report reads as
it did before seeds existed.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import TypeVar

from tinylm.report.runs import Run
from tinylm.report.tables import fmt_loss, fmt_signed

Found = TypeVar("Found", bound=Hashable)  # what same_at_every_seed compares over seeds


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """The mean and sample standard deviation (n - 1) of one number over seeds. Both are None when
    a seed lacks the number (a diverged run has no final loss): a mean over the seeds that happen to
    have it would hide the ones that failed. The deviation is None with one seed."""
    present = _every_seed(values)
    if present is None:
        return None, None
    mean = sum(present) / len(present)
    if len(present) < 2:
        return mean, None
    return mean, math.sqrt(sum((value - mean) ** 2 for value in present) / (len(present) - 1))


def extremes(values: list[float | None]) -> tuple[float | None, float | None]:
    """The smallest and largest value of one number over seeds (None, as for the mean, when a seed
    lacks it): a difference to the baseline has one sign at every seed when both share it."""
    present = _every_seed(values)
    if present is None:
        return None, None
    return min(present), max(present)


def _every_seed(values: list[float | None]) -> list[float] | None:
    """`values` when there are some and no seed lacks the number, else None."""
    present = [value for value in values if value is not None]
    return present if values and len(present) == len(values) else None


def final_losses(run: Run) -> list[float | None]:
    """The run's final validation loss at every seed."""
    return [r.summary.final_val_loss for r in run.at_seeds]


def differences(run: Run, baseline: Run) -> list[float | None]:
    """The run's final validation loss less the baseline's, seed by seed: the two runs themselves
    (the comparison of a one-seed report), then each replica against the baseline's at the same
    seed. None where either lacks a loss or the baseline lacks that seed."""
    baseline_at = {replica.seed: replica for replica in baseline.replicas}
    pairs = [(run, baseline)] + [(replica, baseline_at.get(replica.seed)) for replica in run.replicas]
    return [None if other is None or one.summary.final_val_loss is None or other.summary.final_val_loss is None
            else one.summary.final_val_loss - other.summary.final_val_loss for one, other in pairs]


def common_seeds(runs: list[Run]) -> list[int]:
    """The seeds every run was trained at, in the first run's order."""
    seeds = [r.seed for r in runs[0].at_seeds] if runs else []
    return [seed for seed in seeds if all(seed in [r.seed for r in run.at_seeds] for run in runs)]


def runs_at_seed(runs: list[Run], seed: int) -> list[Run]:
    """Each run at `seed` (itself, or its replica there), in the order of `runs`."""
    return [next(r for r in run.at_seeds if r.seed == seed) for run in runs]


def table_note(runs: list[Run]) -> str:
    """What a table's numbers are at, for its caption: "" with one seed."""
    seeds = max(len(run.at_seeds) for run in runs) if runs else 1
    return f" (at the first seed; the mean and its standard deviation over {seeds} seeds)" if seeds > 1 else ""


def figure_note(runs: list[Run]) -> str:
    """How a figure draws the further seeds, for its caption: "" with one seed."""
    return " (thin lines: further seeds)" if any(run.replicas for run in runs) else ""


def at_seeds_text(agreeing: int, seeds: int) -> str:
    """"at every seed", or "at 1 of 2 seeds"."""
    return "at every seed" if agreeing == seeds else f"at {agreeing} of {seeds} seeds"


def spread_text(mean: float, std: float | None, seeds: int) -> str:
    """A difference over seeds: "+0.280 ± 0.003 over 2 seeds"."""
    return f"{fmt_signed(mean)} ± {fmt_loss(std)} over {seeds} seeds"


def against_baseline_text(run: Run, baseline: Run, than: str = "the baseline",
                          verdicts: tuple[str, str, str] = ("worse than", "better than", "equal to")) -> str:
    """Whether `run` ends on the same side of `baseline` at every seed: "NoPE is worse than the
    baseline at every seed: +0.280 ± 0.003 over 2 seeds." (`verdicts`: for a higher, lower, equal
    loss). "" with one seed."""
    if not run.replicas:
        return ""
    seeds = run.at_seeds
    diverged = [r.seed for r in seeds if r.diverged]
    if diverged:
        where = at_seeds_text(len(diverged), len(seeds))
        return f"{run.label} diverged {where} (seed{'s' * (len(diverged) > 1)} {', '.join(map(str, diverged))})."
    found = differences(run, baseline)
    mean, std = mean_std(found)
    if mean is None:
        return (f"{run.label} against {than}, seed by seed: "
                + ", ".join(f"{fmt_signed(d)} (seed {r.seed})" for d, r in zip(found, seeds)) + ".")
    sign = (mean > 0) - (mean < 0)
    agreeing = sum((d > 0) - (d < 0) == sign for d in found if d is not None)  # a mean has every seed's
    verdict = verdicts[0] if sign > 0 else verdicts[1] if sign < 0 else verdicts[2]
    where = at_seeds_text(agreeing, len(found))
    return f"{run.label} is {verdict} {than} {where}: {spread_text(mean, std, len(found))}."


def same_at_every_seed(runs: list[Run], finding: Callable[[list[Run]], Found],
                       describe: Callable[[Found], str]) -> str:
    """Whether a finding about a set of runs (the best rate, the best batch) is the same when it is
    made from the runs at each seed alone: "At every seed (0, 1), <finding>." or "The seeds
    disagree: at seed 0 <finding>; at seed 1 <another>." "" with one seed."""
    seeds = common_seeds(runs)
    if len(seeds) < 2:
        return ""
    found = {seed: finding(runs_at_seed(runs, seed)) for seed in seeds}
    if len(set(found.values())) == 1:
        return f"At every seed ({', '.join(map(str, seeds))}), {describe(found[seeds[0]])}."
    return "The seeds disagree: " + "; ".join(f"at seed {seed} {describe(value)}" for seed, value in found.items()) \
        + "."
