"""One function per report section. Each writes its figures, tables and `section.md` into its folder.

`section.md` starts with the section's heading, then the generated paragraph, figures (PNG linked,
SVG beside it) and tables (Markdown inline, CSV linked). Links are relative to the section folder;
the index rewrites them when it assembles `results/report/README.md`.
"""
from __future__ import annotations

from tinylm.report import analysis, figures
from tinylm.report.findings import runs_frame, stability_text
from tinylm.report.runs import Run
from tinylm.report.samples import generation_text, write_samples
from tinylm.report.section import Inputs, Section
from tinylm.report.tables import (
    Column,
    fmt_int,
    fmt_loss,
    fmt_rate,
    fmt_ratio,
    fmt_signed,
)


def _ffn_shape(run: Run) -> tuple:
    return run.config.model.ffn, run.config.model.d_ff


def _ffn_widths(runs: list[Run]) -> str:
    """d_ff of each run as a multiple of d_model, e.g. "SiLU: d_ff 2048 = 4.00 d_model"."""
    widths = []
    for run in runs:
        model = run.config.model
        widths.append(f"{run.label}: {model.ffn} d_ff {fmt_int(model.d_ff)} = "
                      f"{fmt_ratio(model.d_ff / model.d_model)} d_model")
    return "; ".join(widths) + "."


# ---- 4-7. variants of the baseline --------------------------------------------------------------

def variant(section: Section, inputs: Inputs) -> None:
    baseline = section.required(inputs.baseline, "--baseline")
    runs = [baseline] + [r for r in inputs.runs if r is not baseline]
    # A variant that changes the feed-forward (SiLU against SwiGLU) says how wide each one is.
    ffn_changed = any(_ffn_shape(r) != _ffn_shape(baseline) for r in runs)
    widths = " " + _ffn_widths(runs) if ffn_changed else ""
    what = section.description or f"{', '.join(r.label for r in runs if r is not baseline)} against the baseline."
    text = what + widths + " " + analysis.variant_text(runs, baseline)
    # Without any normalisation the log's finding is a divergence at the baseline's rate: a run
    # that survived it says how close it came.
    unnormalised = [r for r in runs if r is not baseline and r.lr == baseline.lr and r.config.model.norm == "none"]
    text += "".join(" " + stability_text(r) for r in unnormalised if not r.diverged)
    rates = analysis.variant_rates_text(runs, baseline)
    text += " " + rates if rates else ""
    section.paragraph(text)
    section.figure(figures.loss_curves(runs, "step", baseline), "loss_vs_step",
                   "Train and validation loss against step: variants solid, baseline dashed")
    columns = [Column("run", "run"), Column("lr", "learning rate", fmt_rate), Column("status", "status"),
               Column("params", "parameters", fmt_int),
               Column("final_train_loss", "final train loss", fmt_loss),
               Column("final_val_loss", "final val loss", fmt_loss),
               Column("val_vs_baseline", "val loss - baseline", fmt_signed)]
    if ffn_changed:
        columns.insert(3, Column("d_ff", "d_ff", fmt_int))
    section.table(runs_frame(runs, baseline), columns, "final_losses",
                  "Final losses and difference to the baseline")


# ---- 8. another corpus (OpenWebText) -------------------------------------------------------

def corpus(section: Section, inputs: Inputs) -> None:
    """The run on another corpus against the baseline (dashed)."""
    baseline = section.required(inputs.baseline, "--baseline (the run to compare with)")
    others = [r for r in inputs.runs if r is not baseline]
    if len(others) != 1:
        raise ValueError(f"tinylm report corpus: expected one --run besides the baseline, got {len(others)}")
    run = others[0]
    generated = section.required(inputs.generate, "--generate")
    section.paragraph(analysis.comparison_text(run, baseline))
    section.curves([run, baseline], baseline, f"{run.label} vs {baseline.label}")
    section.table(runs_frame([run, baseline], baseline), [
        Column("run", "run"), Column("status", "status"), Column("steps", "steps", fmt_int),
        Column("vocab_size", "vocabulary", fmt_int), Column("params", "parameters", fmt_int),
        Column("final_train_loss", "final train loss", fmt_loss), Column("final_val_loss", "final val loss", fmt_loss),
        Column("val_vs_baseline", f"val loss - {baseline.label}", fmt_signed),
    ], "final_losses", f"Final losses, {run.label} and {baseline.label}")
    section.paragraph(generation_text(generated, f"the {run.label} run"))
    write_samples(section, generated, inputs.train_text, f"{run.label} samples")
