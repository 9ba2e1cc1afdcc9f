"""One function per report section. Each writes its figures, tables and `section.md` into its folder.

`section.md` starts with the section's heading, then the generated paragraph, figures (PNG linked,
SVG beside it) and tables (Markdown inline, CSV linked). Links are relative to the section folder;
the index rewrites them when it assembles `results/report/README.md`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tinylm.report import analysis, figures
from tinylm.report.findings import runs_frame
from tinylm.report.runs import Run
from tinylm.report.section import Inputs, Section
from tinylm.report.tables import (
    Column,
    fmt_excerpt,
    fmt_int,
    fmt_loss,
    fmt_percent,
    fmt_rate,
    fmt_ratio,
    fmt_share,
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


# ---- 3. generation ---------------------------------------------------------------------------

def distinct_word_ratio(text: str) -> float | None:
    """Distinct words / words: low for text that repeats itself."""
    words = text.split()
    return len(set(words)) / len(words) if words else None


def _samples_frame(generated: dict, known: analysis.KnownWords | None = None) -> pd.DataFrame:
    """One row per sample; `known`: the share of its words found in the training text."""
    samples = generated["samples"]
    in_training = known.per_sample if known is not None else [None] * len(samples)
    return pd.DataFrame([{
        "temperature": s["temperature"], "top_p": s["top_p"], "seed": s["seed"],
        "num_new_tokens": s["num_new_tokens"], "stopped_at_eot": bool(s["stopped_at_eot"]),
        "distinct_word_ratio": distinct_word_ratio(s["completion"]), "known_word_ratio": share,
        "completion": s["completion"],
    } for s, share in zip(samples, in_training)]).astype(object)


SAMPLE_COLUMNS = [Column("seed", "seed", fmt_int), Column("num_new_tokens", "new tokens", fmt_int),
                  Column("stopped_at_eot", "ended at end-of-text"),
                  Column("distinct_word_ratio", "distinct words", fmt_ratio),
                  Column("known_word_ratio", "words in training text", fmt_share),
                  Column("completion", "completion (beginning; whole text in the CSV)", fmt_excerpt)]


def _samples(section: Section, generated: dict, train_text: Path | None, caption: str) -> None:
    """The quoted samples, how many of their words the training text holds, and the samples table."""
    section.markdown(_quoted_samples(generated))
    known = None
    if train_text is not None:
        known = analysis.known_words([s["completion"] for s in generated["samples"]], Path(train_text))
        section.paragraph(analysis.known_words_text(known))
    section.table(_samples_frame(generated, known), SAMPLE_COLUMNS, "samples", caption)


def _quoted_samples(generated: dict) -> str:
    blocks = []
    for sample in generated["samples"]:
        paragraphs = [p.strip() for p in sample["text"].split("\n\n") if p.strip()]
        quoted = "\n>\n".join("\n".join("> " + line for line in p.splitlines()) for p in paragraphs)
        blocks.append(f"Seed {sample['seed']}:\n\n{quoted}\n")
    return "\n".join(blocks)


def _generation_text(generated: dict, what: str) -> str:
    run, settings, samples = generated["run"], generated["settings"], generated["samples"]
    lengths = [s["num_new_tokens"] for s in samples]
    stopped = sum(bool(s["stopped_at_eot"]) for s in samples)
    length = (f"all {fmt_int(lengths[0])} tokens long" if min(lengths) == max(lengths)
              else f"{fmt_int(min(lengths))} to {fmt_int(max(lengths))} tokens long")
    return (f"Text from {run['name']} ({what}; final validation loss {fmt_loss(run.get('final_val_loss'))}) "
            f"for the prompt {generated['prompt']!r} at temperature "
            f"{', '.join(map(str, settings['temperatures']))} and top-p {', '.join(map(str, settings['top_ps']))}, "
            f"at most {fmt_int(settings['max_new_tokens'])} new tokens. {stopped} of {len(samples)} samples ended at "
            f"<|endoftext|> before the limit; they are {length}.")


def sampling_grid(generated: dict) -> pd.DataFrame:
    """One row per (temperature, top-p): averages over seeds and the first seed's text."""
    samples = _samples_frame(generated)
    rows = []
    for (temperature, top_p), group in samples.groupby(["temperature", "top_p"], sort=True):
        ratios = group["distinct_word_ratio"].dropna()
        rows.append({"temperature": temperature, "top_p": top_p, "samples": len(group),
                     "mean_new_tokens": group["num_new_tokens"].mean(),
                     "ended_at_eot": group["stopped_at_eot"].mean() * 100,
                     "distinct_word_ratio": ratios.mean() if len(ratios) else None,
                     "beginning": group.iloc[0]["completion"]})
    return pd.DataFrame(rows).astype(object)


def sampling_grid_text(grid: pd.DataFrame) -> str:
    text = f"The settings table samples {len(grid)} combinations of temperature and top-p."
    known = grid.dropna(subset=["distinct_word_ratio"])
    if len(known) < 2:
        return text
    low = known.loc[known["distinct_word_ratio"].astype(float).idxmin()]
    high = known.loc[known["distinct_word_ratio"].astype(float).idxmax()]
    if low["distinct_word_ratio"] == high["distinct_word_ratio"]:
        return text + f" All give the same distinct-word ratio, {fmt_ratio(low['distinct_word_ratio'])}."
    return text + (f" The most repetitive text (distinct-word ratio {fmt_ratio(low['distinct_word_ratio'])}) "
                   f"comes from temperature {low['temperature']}, top-p {low['top_p']}; the most varied "
                   f"({fmt_ratio(high['distinct_word_ratio'])}) from temperature {high['temperature']}, "
                   f"top-p {high['top_p']} (the ratio falls as texts grow longer, so it compares texts of "
                   f"similar length best).")


def generate(section: Section, inputs: Inputs) -> None:
    generated = section.required(inputs.generate, "--generate")
    section.paragraph(_generation_text(generated, "the non-diverged TinyStories run with the lowest final "
                                                  "validation loss"))
    _samples(section, generated, inputs.train_text, "Samples")
    grid = sampling_grid(inputs.sampling_grid or generated)
    section.paragraph(sampling_grid_text(grid))
    section.table(grid, [
        Column("temperature", "temperature"), Column("top_p", "top-p"), Column("samples", "samples", fmt_int),
        Column("mean_new_tokens", "mean new tokens", fmt_ratio),
        Column("ended_at_eot", "ended at end-of-text", fmt_percent),
        Column("distinct_word_ratio", "distinct words", fmt_ratio),
        Column("beginning", "beginning (first seed)", fmt_excerpt),
    ], "sampling_settings", "Effect of temperature and top-p (same prompt; temperature 0 is greedy)")


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
    text += "".join(" " + analysis.stability_text(r) for r in unnormalised if not r.diverged)
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
    section.paragraph(_generation_text(generated, f"the {run.label} run"))
    _samples(section, generated, inputs.train_text, f"{run.label} samples")
