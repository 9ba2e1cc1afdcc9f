"""The tokenizers section from `tinylm tokenizer-report`: a paragraph per tokenizer and corpus,
compression and throughput bars, and the tables of training and of compression per corpus."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tinylm.report.figures import WIDE
from tinylm.report.section import Inputs, Section
from tinylm.report.tables import Column, fmt_bytes, fmt_duration, fmt_int, fmt_ratio, fmt_speed, fmt_token

TOKENIZER_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]  # runs have theirs


def _tokenizer_frames(report: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per tokenizer, one row per tokenizer x corpus with compression and throughput)."""
    tokenizers = pd.DataFrame([{"tokenizer": name, **info} for name, info in report["tokenizers"].items()])
    per_corpus = pd.DataFrame(report["compression"]).merge(
        pd.DataFrame(report["throughput"])[["tokenizer", "corpus", "bytes_per_s", "pile_825gb_s"]],
        on=["tokenizer", "corpus"], how="left")
    return tokenizers.astype(object), per_corpus.astype(object)


def tokenizer_text(tokenizers: pd.DataFrame, per_corpus: pd.DataFrame, compiled_encoder: bool | None = None) -> str:
    """`compiled_encoder`: which encoder the throughput was measured with (None: not recorded)."""
    parts = []
    for _, tok in tokenizers.iterrows():
        parts.append(f"The {tok['tokenizer']} tokenizer ({fmt_int(tok['vocab_size'])} tokens) trained in "
                     f"{fmt_duration(tok['training_time_s'])} on {fmt_bytes(tok['training_input_bytes'])} of text "
                     f"with a peak memory of {fmt_bytes(tok['peak_memory_bytes'])}; its longest token is "
                     f"{fmt_token(tok['longest_token'])} ({fmt_int(tok['longest_token_bytes'])} bytes).")
    for corpus, rows in per_corpus.groupby("corpus", sort=False):
        best = rows.loc[rows["bytes_per_token"].astype(float).idxmax()]
        parts.append(f"On {corpus}, {best['tokenizer']} compresses best, at {fmt_ratio(best['bytes_per_token'])} "
                     f"bytes/token.")
    if per_corpus["bytes_per_s"].notna().any():
        fastest = per_corpus.loc[per_corpus["bytes_per_s"].astype(float).idxmax()]
        encoders: dict[bool | None, str] = {True: " with the compiled encoder", False: " with the pure-Python encoder"}
        encoder = encoders.get(compiled_encoder, "")
        parts.append(f"The fastest encoding, {fmt_speed(fastest['bytes_per_s'])} bytes/s ({fastest['tokenizer']} "
                     f"on {fastest['corpus']}), would take {fmt_duration(fastest['pile_825gb_s'])} for the 825 GB "
                     f"of the Pile in one process{encoder}.")
    return " ".join(parts)


# ---- figure

def _grouped_bars(ax: plt.Axes, frame, value: str, scale: float = 1.0) -> None:
    """One bar per (corpus, tokenizer) pair, grouped by corpus."""
    corpora = list(dict.fromkeys(frame["corpus"]))
    tokenizers = list(dict.fromkeys(frame["tokenizer"]))
    width = 0.8 / max(len(tokenizers), 1)
    for i, name in enumerate(tokenizers):
        part = frame[frame["tokenizer"] == name].set_index("corpus")[value]
        heights = [float(part.get(c, np.nan)) * scale for c in corpora]
        bars = ax.bar(np.arange(len(corpora)) + (i - (len(tokenizers) - 1) / 2) * width, heights, width,
                      label=str(name), color=TOKENIZER_COLOURS[i % len(TOKENIZER_COLOURS)])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(np.arange(len(corpora)), corpora)
    ax.set_xlabel("corpus")
    ax.margins(y=0.12)


def tokenizer_bars(per_corpus) -> plt.Figure:
    """Compression (bytes/token) and encoding throughput (MB/s) per corpus, one bar per tokenizer."""
    fig, (ax_ratio, ax_speed) = plt.subplots(1, 2, figsize=WIDE, layout="constrained")
    _grouped_bars(ax_ratio, per_corpus, "bytes_per_token")
    ax_ratio.set_ylabel("compression (bytes/token, higher is better)")
    ax_ratio.set_title("Compression ratio")
    _grouped_bars(ax_speed, per_corpus.dropna(subset=["bytes_per_s"]), "bytes_per_s", scale=1e-6)
    ax_speed.set_ylabel("encoding throughput (MB/s, one process)")
    ax_speed.set_title("Encoding throughput")
    handles, labels = ax_ratio.get_legend_handles_labels()
    fig.legend(handles, labels, title="tokenizer", loc="outside lower center", ncol=len(labels), frameon=False)
    return fig


def build(section: Section, inputs: Inputs) -> None:
    report = section.required(inputs.tokenizer_report, "--tokenizer-report")
    tokenizers, per_corpus = _tokenizer_frames(report)
    section.paragraph(tokenizer_text(tokenizers, per_corpus, report["settings"].get("compiled_encoder")))
    section.figure(tokenizer_bars(per_corpus), "compression",
                   "Compression (bytes/token) and encoding throughput of each tokenizer on each corpus")
    section.table(tokenizers, [
        Column("tokenizer", "tokenizer"), Column("vocab_size", "vocabulary", fmt_int),
        Column("training_time_s", "training time", fmt_duration),
        Column("peak_memory_bytes", "peak memory", fmt_bytes),
        Column("training_input_bytes", "training text", fmt_bytes),
        Column("longest_token", "longest token", fmt_token), Column("longest_token_bytes", "its bytes", fmt_int),
    ], "tokenizers", "Tokenizer training: time, memory, longest token")
    section.table(per_corpus, [
        Column("tokenizer", "tokenizer"), Column("corpus", "corpus"),
        Column("bytes_per_token", "bytes/token", fmt_ratio),
        Column("bytes_per_s", "throughput (bytes/s)", fmt_speed),
        Column("pile_825gb_s", "time for 825 GB", fmt_duration),
    ], "compression", "Compression ratio and encoding throughput per corpus (one process)")
