"""A variant section: the baseline with something changed, against the baseline (dashed): what the
variant changes, how its final loss compares, whether and where it diverged, and its loss curves."""
from __future__ import annotations

from tinylm.report import figures
from tinylm.report.findings import VS_BASELINE, divergence_text, runs_frame, seed_columns, stability_text
from tinylm.report.runs import Run
from tinylm.report.section import Inputs, Section
from tinylm.report.seeds import against_baseline_text, figure_note, table_note
from tinylm.report.tables import Column, fmt_int, fmt_loss, fmt_rate, fmt_ratio, fmt_signed
from tinylm.training.summary import SUMMARY


def _ffn_shape(run: Run) -> tuple[str, int]:
    return run.config.model.ffn, run.config.model.d_ff


def _ffn_widths(runs: list[Run]) -> str:
    """d_ff of each run as a multiple of d_model, e.g. "SiLU: d_ff 2048 = 4.00 d_model"."""
    widths = []
    for run in runs:
        model = run.config.model
        widths.append(f"{run.label}: {model.ffn} d_ff {fmt_int(model.d_ff)} = "
                      f"{fmt_ratio(model.d_ff / model.d_model)} d_model")
    return "; ".join(widths) + "."


def variant_text(runs: list[Run], baseline: Run) -> str:
    base_val = baseline.summary.final_val_loss
    named = "" if baseline.label == "baseline" else f" {baseline.label}"
    parts = [f"The baseline{named} (lr {fmt_rate(baseline.lr)}) ends at a final validation loss of {fmt_loss(base_val)}"
             + (" (it diverged)." if baseline.diverged else ".")]
    for run in runs:
        if run is not baseline:
            parts += [ending_text(run, base_val), against_baseline_text(run, baseline)]
    params = {r.label: r.summary.params for r in runs}
    if len(set(params.values())) == 1 and None not in params.values():
        parts.append(f"Every run has {fmt_int(runs[0].summary.params)} parameters.")
    elif len(set(params.values()) - {None}) > 1:
        parts.append("Parameter counts: " + ", ".join(f"{label} {fmt_int(n)}" for label, n in params.items()) + ".")
    return " ".join(part for part in parts if part)


def ending_text(run: Run, base_val: float | None) -> str:
    """How the run (at the first seed) ended, against the baseline's final loss `base_val`."""
    if run.diverged:
        return divergence_text(run, run.label) + "."
    val = run.summary.final_val_loss
    if val is None or base_val is None:
        return f"{run.label} ends at {fmt_loss(val)}."
    difference = val - base_val
    verdict = "worse than" if difference > 0 else "better than" if difference < 0 else "equal to"
    return f"{run.label} ends at {fmt_loss(val)}, {fmt_signed(difference)} ({verdict} the baseline)."


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


def build(section: Section, inputs: Inputs) -> None:
    baseline = section.required(inputs.baseline, "--baseline")
    runs = [baseline] + [r for r in inputs.runs if r is not baseline]
    # A variant that changes the feed-forward (SiLU against SwiGLU) says how wide each one is.
    ffn_changed = any(_ffn_shape(r) != _ffn_shape(baseline) for r in runs)
    widths = " " + _ffn_widths(runs) if ffn_changed else ""
    what = section.description or f"{', '.join(r.label for r in runs if r is not baseline)} against the baseline."
    text = what + widths + " " + variant_text(runs, baseline)
    # Without any normalisation the log's finding is a divergence at the baseline's rate: a run
    # that survived it says how close it came.
    unnormalised = [r for r in runs if r is not baseline and r.lr == baseline.lr and r.config.model.norm == "none"]
    text += "".join(" " + stability_text(r) for r in unnormalised if not r.diverged)
    rates = variant_rates_text(runs, baseline)
    text += " " + rates if rates else ""
    section.paragraph(text)
    section.figure(figures.loss_curves(runs, "step", baseline), "loss_vs_step",
                   f"Train and validation loss against step: variants solid, baseline dashed{figure_note(runs)}")
    columns = [Column("run", "run"), Column("lr", "learning rate", fmt_rate), Column(SUMMARY.status, "status"),
               Column(SUMMARY.params, "parameters", fmt_int),
               Column(SUMMARY.final_train_loss, "final train loss", fmt_loss),
               Column(SUMMARY.final_val_loss, "final val loss", fmt_loss),
               Column(VS_BASELINE, "val loss - baseline", fmt_signed)]
    if ffn_changed:
        columns.insert(3, Column("d_ff", "d_ff", fmt_int))
    spread, csv_only = seed_columns(runs, baseline)
    section.table(runs_frame(runs, baseline), columns + spread, "final_losses",
                  f"Final losses and difference to the baseline{table_note(runs)}", csv_only)
