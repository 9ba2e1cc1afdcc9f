"""A corpus section: the baseline's model trained on another corpus against the baseline (dashed):
loss curves, final losses, and text sampled from it."""
from __future__ import annotations

from tinylm.report.findings import VS_BASELINE, runs_frame, seed_columns
from tinylm.report.runs import Run
from tinylm.report.samples import generation_text, write_samples
from tinylm.report.section import Inputs, Section
from tinylm.report.seeds import against_baseline_text, table_note
from tinylm.report.tables import Column, fmt_int, fmt_loss, fmt_signed
from tinylm.training.summary import SUMMARY


def comparison_text(run: Run, other: Run) -> str:
    """The run on another corpus against `other` (the baseline, on its own corpus)."""
    val, other_val = run.summary.final_val_loss, other.summary.final_val_loss
    text = (f"{run.label} reaches a final train loss of {fmt_loss(run.summary.final_train_loss)} and a final "
            f"validation loss of {fmt_loss(val)} after {fmt_int(run.summary.steps)} steps; "
            f"{other.label} reaches {fmt_loss(other_val)} on its own validation set")
    if val is not None and other_val is not None:
        text += f" ({fmt_signed(val - other_val)} for {run.label})"
    vocabularies = " and ".join(fmt_int(r.config.model.vocab_size) for r in (run, other))
    params = " and ".join(fmt_int(r.summary.params) for r in (run, other))
    seeds = against_baseline_text(run, other, other.label, ("above", "below", "level with"))
    return text + "." + (f" {seeds}" if seeds else "") + (
        f" The two use different texts and tokenizers ({vocabularies} tokens, so {params} parameters): "
        "the gap measures how much harder the data is for the same architecture and budget, not a "
        "like-for-like perplexity.")


def build(section: Section, inputs: Inputs) -> None:
    """The run on another corpus against the baseline (dashed)."""
    baseline = section.required(inputs.baseline, "--baseline (the run to compare with)")
    others = [r for r in inputs.runs if r is not baseline]
    if len(others) != 1:
        raise ValueError(f"tinylm report corpus: expected one --run besides the baseline, got {len(others)}")
    run = others[0]
    generated = section.required(inputs.generate, "--generate")
    section.paragraph(comparison_text(run, baseline))
    section.curves([run, baseline], baseline, f"{run.label} vs {baseline.label}")
    spread, csv_only = seed_columns([run, baseline], baseline)
    section.table(runs_frame([run, baseline], baseline), [
        Column("run", "run"), Column(SUMMARY.status, "status"), Column(SUMMARY.steps, "steps", fmt_int),
        Column("vocab_size", "vocabulary", fmt_int), Column(SUMMARY.params, "parameters", fmt_int),
        Column(SUMMARY.final_train_loss, "final train loss", fmt_loss),
        Column(SUMMARY.final_val_loss, "final val loss", fmt_loss),
        Column(VS_BASELINE, f"val loss - {baseline.label}", fmt_signed), *spread,
    ], "final_losses", f"Final losses, {run.label} and {baseline.label}{table_note([run, baseline])}", csv_only)
    section.paragraph(generation_text(generated, f"the {run.label} run"))
    write_samples(section, generated, inputs.train_text, f"{run.label} samples")
