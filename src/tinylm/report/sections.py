"""One function per report section. Each writes its figures, tables and `section.md` into its folder.

`section.md` starts with the section's heading, then the generated paragraph, figures (PNG linked,
SVG beside it) and tables (Markdown inline, CSV linked). Links are relative to the section folder;
the index rewrites them when it assembles `results/report/README.md`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tinylm.fileio import write_text_atomic
from tinylm.report import TITLES, analysis, figures
from tinylm.report.runs import Run
from tinylm.report.tables import (Column, fmt_bytes, fmt_int, fmt_loss, fmt_percent, fmt_rate, fmt_ratio,
                                  fmt_seconds, fmt_signed, fmt_speed, fmt_text, write_table)

# What each section writes besides section.md: figure stems (.png + .svg) and table stems (.csv + .md).
# The Snakemake rules declare exactly these files as outputs.
CURVES = ["loss_vs_step", "loss_vs_tokens", "loss_vs_time"]
OUTPUTS: dict[str, dict[str, list[str]]] = {
    "tokenizer": {"figures": ["compression"], "tables": ["tokenizers", "compression"]},
    "lr_sweep": {"figures": ["lr_schedule", *CURVES, "final_loss_vs_lr"], "tables": ["lr_sweep"]},
    "batch_size": {"figures": ["memory", *CURVES], "tables": ["batch_size"]},
    "generate": {"figures": [], "tables": ["samples", "sampling_settings"]},
    "no_rmsnorm": {"figures": ["loss_vs_step"], "tables": ["final_losses"]},
    "post_norm": {"figures": ["loss_vs_step"], "tables": ["final_losses"]},
    "nope": {"figures": ["loss_vs_step"], "tables": ["final_losses"]},
    "silu": {"figures": ["loss_vs_step"], "tables": ["final_losses"]},
    "owt": {"figures": CURVES, "tables": ["final_losses", "samples"]},
}
VARIANTS = {
    "no_rmsnorm": "Every RMSNorm removed, at the best rate of the sweep and at a lower rate, against the baseline.",
    "post_norm": "Post-norm (normalise after each residual addition) against the pre-norm baseline.",
    "nope": "No positional encoding (NoPE) against the RoPE baseline.",
    "silu": "A plain SiLU feed-forward (d_ff = 4 d_model, two matrices) against SwiGLU (d_ff ≈ 8/3 d_model, "
            "three matrices), at about the same parameter count.",
}


@dataclass
class Inputs:
    """Everything a section may read besides its runs (JSON files already parsed)."""

    runs: list[Run]
    baseline: Run | None = None
    tokenizer_report: dict | None = None
    generate: dict | None = None
    max_batch: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Section:
    """Collects one section's Markdown while its figures and tables are written to `out_dir`."""

    def __init__(self, key: str, out_dir: Path):
        self.key, self.out_dir = key, Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.parts = [f"## {TITLES[key]}\n"]
        self.written: list[str] = []

    def paragraph(self, text: str) -> None:
        self.parts.append(text.strip() + "\n")

    def figure(self, fig, stem: str, caption: str) -> None:
        png, svg = figures.save(fig, self.out_dir, stem)
        self.written += [png, svg]
        self.parts.append(f"![{caption}]({png})\n\n*{caption}* ([SVG]({svg}))\n")

    def table(self, frame: pd.DataFrame, columns: list[Column], stem: str, caption: str) -> None:
        markdown = write_table(frame, columns, self.out_dir, stem)
        self.written += [f"{stem}.csv", f"{stem}.md"]
        self.parts.append(f"**{caption}** ([CSV]({stem}.csv))\n\n{markdown}")

    def write(self) -> Path:
        expected = [f"{s}.{ext}" for s in OUTPUTS[self.key]["figures"] for ext in ("png", "svg")]
        expected += [f"{s}.{ext}" for s in OUTPUTS[self.key]["tables"] for ext in ("csv", "md")]
        missing = sorted(set(expected) - set(self.written))
        if missing:  # the Snakemake rule declares OUTPUTS: a section must write all of them
            raise AssertionError(f"section {self.key} did not write {', '.join(missing)}")
        path = self.out_dir / "section.md"
        write_text_atomic(path, "\n".join(self.parts))
        return path


def _need(value, option: str, section: str):
    if not value:
        raise ValueError(f"tinylm report {section}: {option} is required")
    return value


def _curves(section: Section, runs: list[Run], baseline: Run | None, what: str) -> None:
    for x, stem in zip(figures.X_AXES, CURVES):
        section.figure(figures.loss_curves(runs, x, baseline), stem,
                       f"{what}: train and validation loss against {figures.X_AXES[x]}")


# ---- 0. tokenizers ---------------------------------------------------------------------------

def tokenizer(section: Section, inputs: Inputs) -> None:
    report = _need(inputs.tokenizer_report, "--tokenizer-report", section.key)
    section.paragraph(tokenizer_text(report))
    tokenizers = pd.DataFrame(report["tokenizers"])
    section.table(tokenizers, [
        Column("name", "tokenizer"), Column("vocab_size", "vocabulary", fmt_int),
        Column("train_time_s", "training time", fmt_seconds), Column("peak_mem_bytes", "peak memory", fmt_bytes),
        Column("longest_token", "longest token"), Column("longest_token_bytes", "its bytes", fmt_int),
        Column("bytes_per_second", "throughput (bytes/s)", fmt_speed),
        Column("hours_for_825gb", "time for 825 GB (h)", fmt_ratio),
    ], "tokenizers", "Tokenizers: training cost, longest token, encoding throughput")
    compression = pd.DataFrame(report["compression"])
    section.table(compression, [
        Column("tokenizer", "tokenizer"), Column("corpus", "corpus"),
        Column("bytes", "text bytes", fmt_int), Column("tokens", "tokens", fmt_int),
        Column("bytes_per_token", "bytes/token", fmt_ratio),
    ], "compression", "Compression ratio (bytes per token) of every tokenizer on every corpus")
    section.figure(figures.grouped_bars(compression, "corpus", "tokenizer", "bytes_per_token",
                                        "compression (bytes/token)", "Compression ratio by corpus"),
                   "compression", "Bytes per token of each tokenizer on each corpus (higher compresses better)")


def tokenizer_text(report: dict) -> str:
    parts = []
    for tok in report["tokenizers"]:
        parts.append(f"{tok['name']} ({fmt_int(tok['vocab_size'])} tokens) trained in "
                     f"{fmt_seconds(tok.get('train_time_s'))} with a peak memory of {fmt_bytes(tok.get('peak_mem_bytes'))}; "
                     f"its longest token is {tok.get('longest_token')!r} ({fmt_int(tok.get('longest_token_bytes'))} bytes). "
                     f"It encodes {fmt_speed(tok.get('bytes_per_second'))} bytes/s, so 825 GB of text would take "
                     f"{fmt_ratio(tok.get('hours_for_825gb'))} h.")
    for corpus, rows in pd.DataFrame(report["compression"]).groupby("corpus", sort=False):
        best = rows.loc[rows["bytes_per_token"].astype(float).idxmax()]
        parts.append(f"On {corpus}, {best['tokenizer']} compresses best at {fmt_ratio(best['bytes_per_token'])} "
                     f"bytes/token.")
    return " ".join(parts)


# ---- 1. learning rate ------------------------------------------------------------------------

def lr_sweep(section: Section, inputs: Inputs) -> None:
    runs = sorted(inputs.runs, key=lambda r: r.lr)
    edge = analysis.edge_of_stability(runs)
    section.paragraph(analysis.lr_sweep_text(runs, edge))
    section.figure(figures.lr_schedule(runs), "lr_schedule", "Learning rate per step for each run")
    _curves(section, runs, None, "Learning-rate sweep")
    section.figure(figures.final_loss_vs_lr(runs, edge.best, edge.smallest_diverging), "final_loss_vs_lr",
                   "Final validation loss against learning rate (x: diverged)")
    section.table(analysis.runs_frame(runs), [
        Column("run", "run"), Column("lr", "learning rate", fmt_rate), Column("status", "status"),
        Column("final_val_loss", "final val loss", fmt_loss), Column("best_val_loss", "best val loss", fmt_loss),
        Column("target_reached_step", "target reached at step", fmt_int), Column("diverged", "diverged"),
        Column("steps", "steps", fmt_int),
    ], "lr_sweep", "Learning-rate sweep: final and best validation loss, step at which the target was reached")


# ---- 2. batch size ---------------------------------------------------------------------------

def batch_size(section: Section, inputs: Inputs) -> None:
    runs = sorted(inputs.runs, key=lambda r: r.batch_size)
    section.paragraph(analysis.batch_size_text(runs, inputs.max_batch))
    section.figure(figures.memory_and_speed(runs, inputs.max_batch), "memory",
                   "Peak memory (MiB and % of device memory) and throughput per batch size")
    _curves(section, runs, None, "Batch sizes")
    section.table(analysis.runs_frame(runs), [
        Column("run", "run"), Column("batch_size", "batch", fmt_int), Column("lr", "learning rate", fmt_rate),
        Column("peak_mem_bytes", "peak memory", fmt_bytes), Column("mem_percent", "% of device memory", fmt_percent),
        Column("tokens_per_s", "tokens/s", fmt_speed), Column("final_val_loss", "final val loss", fmt_loss),
        Column("status", "status"),
    ], "batch_size", "Batch sizes at a fixed token budget")


# ---- 3. generation ---------------------------------------------------------------------------

def _samples_frame(generated: dict) -> pd.DataFrame:
    return pd.DataFrame([{"seed": s["seed"], "num_new_tokens": s["num_new_tokens"],
                          "stopped_at_eot": bool(s["stopped_at_eot"]), "text": s["text"]}
                         for s in generated["samples"]])


SAMPLE_COLUMNS = [Column("seed", "seed", fmt_int), Column("num_new_tokens", "new tokens", fmt_int),
                  Column("stopped_at_eot", "stopped at <\\|endoftext\\|>"), Column("text", "text")]


def _quoted_samples(generated: dict) -> str:
    blocks = []
    for sample in generated["samples"]:
        quoted = "\n".join("> " + line for line in (generated["prompt"] + sample["text"]).splitlines())
        blocks.append(f"Seed {sample['seed']}:\n\n{quoted}\n")
    return "\n".join(blocks)


def generate(section: Section, inputs: Inputs) -> None:
    generated = _need(inputs.generate, "--generate", section.key)
    settings = generated["settings"]
    samples = generated["samples"]
    stopped = sum(bool(s["stopped_at_eot"]) for s in samples)
    section.paragraph(
        f"Text from {generated['run']} (the non-diverged TinyStories run with the lowest final validation loss"
        + (f", {fmt_loss(generated['final_val_loss'])}" if generated.get("final_val_loss") is not None else "")
        + f") for the prompt {generated['prompt']!r}, temperature {settings['temperature']}, top-p "
        f"{settings['top_p']}, at most {fmt_int(settings['max_new_tokens'])} new tokens. {stopped} of "
        f"{len(samples)} samples ended with <|endoftext|> before the limit; they are "
        f"{fmt_int(min(s['num_new_tokens'] for s in samples))} to {fmt_int(max(s['num_new_tokens'] for s in samples))} "
        f"tokens long.")
    section.parts.append(_quoted_samples(generated))
    section.table(_samples_frame(generated), SAMPLE_COLUMNS, "samples", "Samples")
    grid = pd.DataFrame([{"temperature": g["temperature"], "top_p": g["top_p"], "num_new_tokens":
                          g["num_new_tokens"], "distinct_token_ratio": g.get("distinct_token_ratio"),
                          "text": g["text"]} for g in generated.get("grid", [])],
                        columns=["temperature", "top_p", "num_new_tokens", "distinct_token_ratio", "text"])
    section.paragraph(sampling_grid_text(grid))
    section.table(grid, [
        Column("temperature", "temperature"), Column("top_p", "top-p"),
        Column("num_new_tokens", "new tokens", fmt_int), Column("distinct_token_ratio", "distinct tokens", fmt_ratio),
        Column("text", "beginning of the text"),
    ], "sampling_settings", "Effect of the sampling settings (same prompt and seed)")


def sampling_grid_text(grid: pd.DataFrame) -> str:
    if grid.empty:
        return "No sampling-settings grid was generated."
    known = grid.dropna(subset=["distinct_token_ratio"])
    if known.empty:
        return f"The table samples {len(grid)} combinations of temperature and top-p from the same seed."
    low = known.loc[known["distinct_token_ratio"].astype(float).idxmin()]
    high = known.loc[known["distinct_token_ratio"].astype(float).idxmax()]
    return (f"The table samples {len(grid)} combinations of temperature and top-p from the same seed. The most "
            f"repetitive text (distinct-token ratio {fmt_ratio(low['distinct_token_ratio'])}) comes from temperature "
            f"{low['temperature']}, top-p {low['top_p']}; the most varied ({fmt_ratio(high['distinct_token_ratio'])}) "
            f"from temperature {high['temperature']}, top-p {high['top_p']}.")


# ---- 4-7. architecture variants --------------------------------------------------------------

def variant(section: Section, inputs: Inputs) -> None:
    baseline = _need(inputs.baseline, "--baseline", section.key)
    runs = [baseline] + [r for r in inputs.runs if r is not baseline]
    section.paragraph(VARIANTS[section.key] + " " + analysis.variant_text(runs, baseline))
    section.figure(figures.loss_curves(runs, "step", baseline), "loss_vs_step",
                   "Train and validation loss against step: variants solid, baseline dashed")
    columns = [Column("run", "run"), Column("lr", "learning rate", fmt_rate), Column("status", "status"),
               Column("params", "parameters", fmt_int),
               Column("final_train_loss", "final train loss", fmt_loss),
               Column("final_val_loss", "final val loss", fmt_loss),
               Column("val_vs_baseline", "val loss - baseline", fmt_signed)]
    if section.key == "silu":
        columns.insert(3, Column("d_ff", "d_ff", fmt_int))
    section.table(analysis.runs_frame(runs, baseline), columns, "final_losses",
                  "Final losses and difference to the baseline")


# ---- 8. OpenWebText --------------------------------------------------------------------------

def owt(section: Section, inputs: Inputs) -> None:
    """The OpenWebText run against the TinyStories baseline (dashed)."""
    baseline = _need(inputs.baseline, "--baseline (the TinyStories run to compare with)", section.key)
    others = [r for r in inputs.runs if r is not baseline]
    if len(others) != 1:
        raise ValueError(f"tinylm report owt: expected one OpenWebText --run besides the baseline, got {len(others)}")
    run = others[0]
    generated = _need(inputs.generate, "--generate", section.key)
    section.paragraph(analysis.comparison_text(run, baseline))
    _curves(section, [run, baseline], baseline, "OpenWebText vs TinyStories")
    section.table(analysis.runs_frame([run, baseline], baseline), [
        Column("run", "run"), Column("status", "status"), Column("steps", "steps", fmt_int),
        Column("params", "parameters", fmt_int), Column("final_train_loss", "final train loss", fmt_loss),
        Column("final_val_loss", "final val loss", fmt_loss), Column("val_vs_baseline", "val loss - TinyStories", fmt_signed),
    ], "final_losses", "Final losses, OpenWebText and TinyStories")
    section.paragraph(f"A sample from {generated['run']} for the prompt {generated['prompt']!r}:")
    section.parts.append(_quoted_samples(generated))
    section.table(_samples_frame(generated), SAMPLE_COLUMNS, "samples", "OpenWebText samples")


BUILDERS = {"tokenizer": tokenizer, "lr_sweep": lr_sweep, "batch_size": batch_size, "generate": generate,
            "no_rmsnorm": variant, "post_norm": variant, "nope": variant, "silu": variant, "owt": owt}
NEEDS_RUNS = {"lr_sweep", "batch_size", "no_rmsnorm", "post_norm", "nope", "silu", "owt"}


def build(key: str, out_dir: Path, inputs: Inputs) -> Path:
    if key in NEEDS_RUNS and not inputs.runs:
        raise ValueError(f"tinylm report {key}: at least one --run LABEL RUN_DIR is required")
    section = Section(key, out_dir)
    BUILDERS[key](section, inputs)
    return section.write()
