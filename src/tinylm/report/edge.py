"""The edge of stability of a learning-rate sweep: which rates fail, the bracket the edge lies in,
how far the best rate lies below it, and how sensitive the final loss is to the rate.

Shared by every section that sweeps the learning rate (the lr sweep, a variant swept over rates,
the edge-across-scale study) and by `tinylm refine-rates`, which adds rates inside the bracket.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tinylm.files import load_npy
from tinylm.report.findings import best_run
from tinylm.report.kinds import EDGE_TABLE
from tinylm.report.runs import Run
from tinylm.report.tables import Column, fmt_loss, fmt_rate, fmt_ratio
from tinylm.training.divergence import INITIAL_LOSS_STEPS, LOSS_SMOOTHING

if TYPE_CHECKING:
    from tinylm.report.section import Section

# Unigram frequencies are estimated from at most this many tokens of each array: plenty for a
# vocabulary of tens of thousands, and the reference corpora hold billions.
UNIGRAM_TOKENS = 10_000_000

DIVERGED, STOPPED, TRAINS = "diverged", "stopped learning", "trains"


@lru_cache(maxsize=8)
def _unigram_loss(train_tokens: str, valid_tokens: str, vocab_size: int) -> float | None:
    if not (Path(train_tokens).is_file() and Path(valid_tokens).is_file()):
        return None
    train = load_npy(train_tokens, "token array")[:UNIGRAM_TOKENS]
    valid = load_npy(valid_tokens, "token array")[:UNIGRAM_TOKENS]
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0  # add-one: no log(0)
    log_p = np.log(counts / counts.sum())
    return float(-log_p[valid].mean())


def unigram_loss(run: Run) -> float | None:
    """Cross-entropy (nats/token) of the run's validation tokens when each token is predicted by its
    frequency in the training tokens alone: the loss of a model that learned nothing about context.
    None when the token arrays named in the run's config are not there."""
    data = run.config.data
    return _unigram_loss(data.train_tokens, data.valid_tokens, run.config.model.vocab_size)


@dataclass
class EdgeOfStability:
    """Which rates fail and where the edge lies. A rate fails when its run diverged (the trainer
    caught a non-finite loss, or a smoothed training loss above `training.divergence_factor` times
    the untrained model's) or when it stopped learning: its final validation loss is no better than
    the unigram loss, or closer to it than to the best rate's loss (above `threshold`, their midpoint).

    The edge lies in the bracket from the largest rate that trains below the smallest failing rate
    (`largest_stable`) to that failing rate (`smallest_failing`)."""

    best: Run | None                  # lowest final validation loss among runs that did not diverge
    smallest_failing: Run | None      # the smallest failing rate above the best
    largest_stable: Run | None        # the largest rate that trains below the smallest failing one
    unigram: float | None
    threshold: float | None
    outcomes: dict[str, str]          # run label -> DIVERGED | STOPPED | TRAINS
    lr_sensitivity: float | None      # see lr_sensitivity()

    @property
    def ratio(self) -> float | None:
        """Smallest failing rate / best rate: how far below the edge the best rate lies."""
        if self.best is None or self.smallest_failing is None:
            return None
        return self.smallest_failing.lr / self.best.lr

    @property
    def bracket_ratio(self) -> float | None:
        """Smallest failing rate / largest rate that trains below it: how closely the edge is known."""
        if self.largest_stable is None or self.smallest_failing is None:
            return None
        return self.smallest_failing.lr / self.largest_stable.lr


def outcome(run: Run, unigram: float | None, threshold: float | None) -> str:
    if run.diverged:
        return DIVERGED
    val = run.summary.final_val_loss
    if val is not None and unigram is not None and (val >= unigram or (threshold is not None and val > threshold)):
        return STOPPED
    return TRAINS


def edge_of_stability(runs: list[Run]) -> EdgeOfStability:
    best = best_run(runs)
    unigram = next((u for u in map(unigram_loss, runs) if u is not None), None)
    threshold = None
    if unigram is not None and best is not None and best.summary.final_val_loss is not None:
        threshold = (unigram + best.summary.final_val_loss) / 2
    outcomes = {r.label: outcome(r, unigram, threshold) for r in runs}
    # The edge lies above the best rate: a rate below it that learns too little is slow, not unstable.
    failing = [r for r in runs if outcomes[r.label] != TRAINS and (best is None or r.lr > best.lr)]
    smallest_failing = min(failing, key=lambda r: r.lr, default=None)
    stable = [r for r in runs if outcomes[r.label] == TRAINS
              and (smallest_failing is None or r.lr < smallest_failing.lr)]
    return EdgeOfStability(
        best=best, smallest_failing=smallest_failing, largest_stable=max(stable, key=lambda r: r.lr, default=None),
        unigram=unigram, threshold=threshold, outcomes=outcomes, lr_sensitivity=lr_sensitivity(runs, best))


def lr_sensitivity(runs: list[Run], best: Run | None) -> float | None:
    """Wortsman et al. 2023 (arXiv 2309.14322, section 2.2): the mean over the sweep's rates of
    min(final loss, initial loss) - the best final loss. A run that diverged counts at the initial
    loss; the initial loss is the untrained model's (the divergence rule's reference, its smoothed
    loss over the first steps), the same for every rate of a sweep up to its first updates."""
    initial = [r.summary.divergence_reference_loss for r in runs if r.summary.divergence_reference_loss is not None]
    best_loss = None if best is None else best.summary.final_val_loss
    if best_loss is None or not initial:
        return None
    start = min(initial)
    losses = [start if r.summary.final_val_loss is None else min(r.summary.final_val_loss, start) for r in runs]
    return sum(losses) / len(losses) - best_loss


def criterion_text(edge: EdgeOfStability, runs: list[Run]) -> str:
    factors = sorted({float(r.config.training.divergence_factor) for r in runs})
    factor = "/".join(f"{f:g}" for f in factors)
    text = (f"A rate fails when its run diverges (the trainer stops it at a non-finite loss or a training loss "
            f"smoothed over about {1 / (1 - LOSS_SMOOTHING):.0f} steps above {factor}x the untrained model's, its "
            f"largest over the first {INITIAL_LOSS_STEPS} steps)")
    if edge.unigram is None:
        return text + ("; the unigram loss, which would also mark runs that stop learning, is not known here "
                       "(the runs' token arrays are missing).")
    text += (f" or when it stops learning: its final validation loss is no better than the unigram loss "
             f"({fmt_loss(edge.unigram)}, predicting each token by its frequency in the training tokens)")
    if edge.threshold is not None:
        text += (f" or closer to it than to the best rate's, that is above {fmt_loss(edge.threshold)}, "
                 f"the midpoint of the two")
    return text + "."


def bracket_text(edge: EdgeOfStability) -> str:
    """Where the edge lies, as a bracket, and how the best rate stands against it."""
    if edge.best is None:
        return ""
    if edge.smallest_failing is None:
        return f"No rate above the best ({fmt_rate(edge.best.lr)}) fails: the edge lies above every rate tried."
    text = f"The edge of stability lies between {fmt_rate(edge.largest_stable.lr)} (trains) and " \
        if edge.largest_stable is not None else "The edge of stability lies below "
    text += (f"{fmt_rate(edge.smallest_failing.lr)} (fails)"
             + (f", a bracket of {fmt_ratio(edge.bracket_ratio)}x" if edge.bracket_ratio is not None else "")
             + f"; the smallest failing rate is {fmt_ratio(edge.ratio)}x the best ({fmt_rate(edge.best.lr)}).")
    if edge.lr_sensitivity is not None:
        text += (f" The sweep's LR sensitivity (Wortsman et al. 2023: the mean over its rates of the final loss, "
                 f"capped at the initial loss, less the best) is {fmt_loss(edge.lr_sensitivity)}.")
    return text


EDGE_COLUMNS = [
    Column("best_lr", "best rate", fmt_rate), Column("best_final_val_loss", "its final val loss", fmt_loss),
    Column("largest_stable_lr", "largest rate that trains", fmt_rate),
    Column("smallest_diverging_lr", "smallest failing rate", fmt_rate),
    Column("ratio", "smallest failing / best", fmt_ratio),
    Column("bracket_ratio", "smallest failing / largest that trains", fmt_ratio),
    Column("lr_sensitivity", "LR sensitivity", fmt_loss),
]


def edge_row(edge: EdgeOfStability) -> dict[str, float | None]:
    """The edge as one table row. The CSV keeps its column names; "diverging" there means failing
    (diverged or stopped learning)."""
    return {
        "best_lr": edge.best.lr if edge.best else None,
        "best_final_val_loss": edge.best.summary.final_val_loss if edge.best else None,
        "largest_stable_lr": edge.largest_stable.lr if edge.largest_stable else None,
        "smallest_diverging_lr": edge.smallest_failing.lr if edge.smallest_failing else None,
        "ratio": edge.ratio, "bracket_ratio": edge.bracket_ratio, "lr_sensitivity": edge.lr_sensitivity,
    }


def edge_frame(edge: EdgeOfStability) -> pd.DataFrame:
    return pd.DataFrame([edge_row(edge)]).astype(object)


def write_edge(section: Section, runs: list[Run]) -> None:
    """A sweep's edge of stability, as a paragraph and a table (EDGE_TABLE) of its section."""
    edge = edge_of_stability(runs)
    section.paragraph(bracket_text(edge))
    section.table(edge_frame(edge), EDGE_COLUMNS, EDGE_TABLE,
                  "Edge of stability of the sweep (failing: diverged or stopped learning)")
