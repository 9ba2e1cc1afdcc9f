"""Findings computed from finished runs, and the sentences that state them.

Every sentence is built from the numbers (formatted as in the tables), never written by hand, so
the text follows the results when the configuration changes.
"""
from __future__ import annotations

from tinylm.report.findings import divergence_text
from tinylm.report.runs import Run
from tinylm.report.tables import (
    fmt_int,
    fmt_loss,
    fmt_rate,
    fmt_ratio,
    fmt_signed,
)

# ---- architecture variants -------------------------------------------------------------------


def variant_text(runs: list[Run], baseline: Run) -> str:
    base_val = baseline.summary.final_val_loss
    named = "" if baseline.label == "baseline" else f" {baseline.label}"
    parts = [f"The baseline{named} (lr {fmt_rate(baseline.lr)}) ends at a final validation loss of {fmt_loss(base_val)}"
             + (" (it diverged)." if baseline.diverged else ".")]
    for run in runs:
        if run is baseline:
            continue
        if run.diverged:
            parts.append(divergence_text(run, run.label) + ".")
            continue
        val = run.summary.final_val_loss
        if val is None or base_val is None:
            parts.append(f"{run.label} ends at {fmt_loss(val)}.")
            continue
        difference = val - base_val
        verdict = "worse than" if difference > 0 else "better than" if difference < 0 else "equal to"
        parts.append(f"{run.label} ends at {fmt_loss(val)}, {fmt_signed(difference)} ({verdict} the baseline).")
    params = {r.label: r.summary.params for r in runs}
    if len(set(params.values())) == 1 and None not in params.values():
        parts.append(f"Every run has {fmt_int(runs[0].summary.params)} parameters.")
    elif len(set(params.values()) - {None}) > 1:
        parts.append("Parameter counts: " + ", ".join(f"{label} {fmt_int(n)}" for label, n in params.items()) + ".")
    return " ".join(parts)


def variant_rates_text(runs: list[Run], baseline: Run) -> str:
    """For a variant trained at several rates: the smallest rate at which it diverged, against the
    baseline's rate (the log's no-RMSNorm finding is a divergence at the baseline's best rate)."""
    variants = [r for r in runs if r is not baseline]
    if len({r.lr for r in variants}) < 2:
        return ""
    diverged = sorted((r for r in variants if r.diverged), key=lambda r: r.lr)
    if not diverged:
        return f"None of the variant's {len(variants)} rates diverged."
    smallest, base = diverged[0], fmt_rate(baseline.lr)
    text = (f"The smallest rate at which the variant diverged is {fmt_rate(smallest.lr)}, "
            f"{fmt_ratio(smallest.lr / baseline.lr)}x the baseline's rate ({base})")
    trains_below = sorted(r.lr for r in variants if not r.diverged and r.lr < smallest.lr)
    if trains_below:
        text += f", and it trains at {' and '.join(map(fmt_rate, trains_below))}"
    where = "at or below" if smallest.lr <= baseline.lr else "above"
    return text + f": its edge of stability lies {where} the baseline's rate."


def comparison_text(run: Run, other: Run) -> str:
    """The OpenWebText run against the TinyStories run of the same architecture and step count."""
    val, other_val = run.summary.final_val_loss, other.summary.final_val_loss
    text = (f"{run.label} reaches a final train loss of {fmt_loss(run.summary.final_train_loss)} and a final "
            f"validation loss of {fmt_loss(val)} after {fmt_int(run.summary.steps)} steps; "
            f"{other.label} reaches {fmt_loss(other_val)} on its own validation set")
    if val is not None and other_val is not None:
        text += f" ({fmt_signed(val - other_val)} for {run.label})"
    vocabularies = " and ".join(fmt_int(r.config.model.vocab_size) for r in (run, other))
    params = " and ".join(fmt_int(r.summary.params) for r in (run, other))
    return text + (f". The two use different texts and tokenizers ({vocabularies} tokens, so {params} parameters): "
                   "the gap measures how much harder the data is for the same architecture and budget, not a "
                   "like-for-like perplexity.")
