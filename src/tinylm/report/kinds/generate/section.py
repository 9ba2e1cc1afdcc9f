"""The generation section: samples from the best run at the main sampling setting, how many of
their words the training text holds, and the effect of temperature and top-p."""
from __future__ import annotations

import pandas as pd

from tinylm.report.samples import generation_text, samples_frame, write_samples
from tinylm.report.section import Inputs, Section
from tinylm.report.tables import Column, fmt_excerpt, fmt_int, fmt_percent, fmt_ratio


def sampling_grid(generated: dict) -> pd.DataFrame:
    """One row per (temperature, top-p): averages over seeds and the first seed's text."""
    samples = samples_frame(generated)
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


def build(section: Section, inputs: Inputs) -> None:
    generated = section.required(inputs.generate, "--generate")
    # The plan says which runs it chose among (their corpus); run by hand, the section cannot know.
    chosen = section.description or "the non-diverged run with the lowest final validation loss"
    section.paragraph(generation_text(generated, chosen))
    write_samples(section, generated, inputs.train_text, "Samples")
    grid = sampling_grid(inputs.sampling_grid or generated)
    section.paragraph(sampling_grid_text(grid))
    section.table(grid, [
        Column("temperature", "temperature"), Column("top_p", "top-p"), Column("samples", "samples", fmt_int),
        Column("mean_new_tokens", "mean new tokens", fmt_ratio),
        Column("ended_at_eot", "ended at end-of-text", fmt_percent),
        Column("distinct_word_ratio", "distinct words", fmt_ratio),
        Column("beginning", "beginning (first seed)", fmt_excerpt),
    ], "sampling_settings", "Effect of temperature and top-p (same prompt; temperature 0 is greedy)")
