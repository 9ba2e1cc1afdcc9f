"""Findings computed from finished runs, and the sentences that state them.

Every sentence is built from the numbers (formatted as in the tables), never written by hand, so
the text follows the results when the configuration changes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import regex

from tinylm.files import load_npy
from tinylm.report.runs import Run
from tinylm.report.tables import (
    fmt_bytes,
    fmt_int,
    fmt_loss,
    fmt_percent,
    fmt_rate,
    fmt_ratio,
    fmt_share,
    fmt_signed,
    fmt_speed,
)
from tinylm.training.divergence import INITIAL_LOSS_STEPS, LOSS_SMOOTHING
from tinylm.training.summary import best_run as summary_best_run


def runs_frame(runs: list[Run], baseline: Run | None = None) -> pd.DataFrame:
    """One row per run with every per-run number a section tabulates."""
    rows = []
    reference = baseline.summary.final_val_loss if baseline else None
    for run in runs:
        val = run.summary.final_val_loss
        rows.append({
            "run": run.label,
            "lr": run.lr,
            "batch_size": run.batch_size,
            "status": run.summary.status,
            "diverged": run.diverged,
            "steps": run.summary.steps,
            "params": run.summary.params,
            "final_train_loss": run.summary.final_train_loss,
            "final_val_loss": val,
            "best_val_loss": run.summary.best_val_loss,
            "target_reached_step": run.summary.target_reached_step,
            "tokens_per_s": run.summary.tokens_per_s,
            "peak_mem_bytes": run.summary.peak_mem_bytes,
            "mem_percent": run.summary.mem_percent,
            "val_vs_baseline": None if val is None or reference is None else val - reference,
            "d_ff": run.config.model.d_ff,
            "vocab_size": run.config.model.vocab_size,
        })
    return pd.DataFrame(rows).astype(object)  # keep None as None, ints as ints


def best_run(runs: list[Run]) -> Run | None:
    """The run that did not diverge and ended lowest (the rule generation and export use too)."""
    return summary_best_run(runs, lambda run: run.summary)


# ---- learning rate ---------------------------------------------------------------------------

# Unigram frequencies are estimated from at most this many tokens of each array: plenty for a
# vocabulary of tens of thousands, and the reference corpora hold billions.
UNIGRAM_TOKENS = 10_000_000


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


DIVERGED, STOPPED, TRAINS = "diverged", "stopped learning", "trains"


@dataclass
class EdgeOfStability:
    """Which rates fail and where the edge lies. A rate fails when its run diverged (the trainer
    caught a non-finite loss, or a smoothed training loss above `training.divergence_factor` times the
    untrained model's)
    or when it stopped learning: its final validation loss is no better than the unigram loss, or
    closer to it than to the best rate's loss (above `threshold`, their midpoint)."""

    best: Run | None                  # lowest final validation loss among runs that did not diverge
    smallest_failing: Run | None      # the smallest failing rate above the best
    largest_stable: Run | None        # the largest rate that trains
    unigram: float | None
    threshold: float | None
    outcomes: dict[str, str]          # run label -> DIVERGED | STOPPED | TRAINS

    @property
    def ratio(self) -> float | None:
        """Smallest failing rate / best rate: how far below the edge the best rate lies."""
        if self.best is None or self.smallest_failing is None:
            return None
        return self.smallest_failing.lr / self.best.lr


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
    if unigram is not None and best is not None:
        threshold = (unigram + best.summary.final_val_loss) / 2
    outcomes = {r.label: outcome(r, unigram, threshold) for r in runs}
    # The edge lies above the best rate: a rate below it that learns too little is slow, not unstable.
    failing = [r for r in runs if outcomes[r.label] != TRAINS and (best is None or r.lr > best.lr)]
    stable = [r for r in runs if outcomes[r.label] == TRAINS]
    return EdgeOfStability(
        best=best, smallest_failing=min(failing, key=lambda r: r.lr, default=None),
        largest_stable=max(stable, key=lambda r: r.lr, default=None),
        unigram=unigram, threshold=threshold, outcomes=outcomes)


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


def lr_sweep_text(runs: list[Run], edge: EdgeOfStability) -> str:
    rates = sorted(r.lr for r in runs)
    failed = sorted((r for r in runs if edge.outcomes[r.label] != TRAINS), key=lambda r: r.lr)
    parts = [f"The sweep trained {len(runs)} learning rates from {fmt_rate(rates[0])} to {fmt_rate(rates[-1])}.",
             criterion_text(edge, runs)]
    if failed:
        described = []
        for run in failed:
            if edge.outcomes[run.label] == DIVERGED:
                described.append(divergence_text(run, fmt_rate(run.lr)))
            else:
                described.append(f"{fmt_rate(run.lr)} stopped learning (final validation loss "
                                 f"{fmt_loss(run.summary.final_val_loss)})")
        parts.append(f"{len(failed)} of {len(runs)} failed: {'; '.join(described)}.")
    else:
        parts.append("None failed.")
    if edge.best is not None:
        parts.append(f"The best rate is {fmt_rate(edge.best.lr)}, with a final validation loss of "
                     f"{fmt_loss(edge.best.summary.final_val_loss)}.")
    if edge.smallest_failing is not None and edge.best is not None:
        parts.append(f"The smallest failing rate, {fmt_rate(edge.smallest_failing.lr)}, is "
                     f"{fmt_ratio(edge.ratio)}x the best rate (the edge of stability).")
        if edge.largest_stable is edge.best:
            parts.append(f"The best rate is also the largest rate that trains, so the edge lies between "
                         f"{fmt_rate(edge.best.lr)} and {fmt_rate(edge.smallest_failing.lr)}.")
        elif edge.largest_stable is not None:
            parts.append(f"The largest rate that still trains, {fmt_rate(edge.largest_stable.lr)}, ends at "
                         f"{fmt_loss(edge.largest_stable.summary.final_val_loss)}, above the best.")
            parts.append(stability_text(edge.largest_stable))
    elif edge.best is not None:
        largest = max(runs, key=lambda r: r.lr)
        parts.append(f"The edge of stability lies above the largest rate tried, {fmt_rate(rates[-1])}"
                     + (f": it ends at {fmt_loss(largest.summary.final_val_loss)}, "
                        f"{fmt_signed(largest.summary.final_val_loss - edge.best.summary.final_val_loss)} "
                        f"from the best, below the failure threshold of {fmt_loss(edge.threshold)}."
                        if edge.threshold is not None and largest.summary.final_val_loss is not None else "."))
    else:
        parts.append(f"Every rate diverged: the edge of stability lies below {fmt_rate(rates[0])}.")
    parts.append(target_text(runs))
    return " ".join(p for p in parts if p)


def target_text(runs: list[Run]) -> str:
    targets = {r.summary.early_stop_loss for r in runs} - {None}
    if len(targets) != 1:
        return ""
    target = targets.pop()
    reached = sorted((r for r in runs if r.summary.target_reached_step is not None),
                     key=lambda r: r.summary.target_reached_step)
    if not reached:
        return f"No run reached the target validation loss of {fmt_loss(target)}."
    first = reached[0]
    return (f"{len(reached)} of {len(runs)} runs reached the target validation loss of {fmt_loss(target)}; "
            f"{first.label} first, at step {fmt_int(first.summary.target_reached_step)}.")


# ---- batch size ------------------------------------------------------------------------------

def batch_size_text(runs: list[Run], max_batch: dict | None) -> str:
    ordered = sorted(runs, key=lambda r: r.batch_size)
    budgets = sorted({r.config.planned_tokens for r in ordered})
    budget = (f"the same budget of {fmt_int(budgets[0])} tokens" if len(budgets) == 1
              else f"budgets of {fmt_int(budgets[0])} to {fmt_int(budgets[-1])} tokens")
    parts = [f"Batch sizes {', '.join(fmt_int(r.batch_size) for r in ordered)} trained on {budget}, each at its "
             f"configured learning rate."]
    if max_batch:
        limit = max_batch.get("memory_budget_bytes")
        parts.append("The largest batch whose training step fits "
                     + (f"the {fmt_bytes(limit)} memory budget" if limit else "the device memory")
                     + f" on {max_batch.get('device', 'the device')} is {fmt_int(max_batch.get('largest_batch'))}.")
    fastest = max((r for r in runs if r.summary.tokens_per_s is not None),
                  key=lambda r: r.summary.tokens_per_s, default=None)
    if fastest is not None:
        parts.append(f"Throughput peaks at batch {fmt_int(fastest.batch_size)} with "
                     f"{fmt_speed(fastest.summary.tokens_per_s)} tokens/s.")
    with_memory = [r for r in ordered if r.summary.peak_mem_bytes is not None]
    if len(with_memory) >= 2:
        small, large = with_memory[0], with_memory[-1]
        parts.append(f"Peak memory is {fmt_bytes(small.summary.peak_mem_bytes)} at batch "
                     f"{fmt_int(small.batch_size)} and {fmt_bytes(large.summary.peak_mem_bytes)} at batch "
                     f"{fmt_int(large.batch_size)}"
                     + (f" ({fmt_percent(large.summary.mem_percent)} of device memory)."
                        if large.summary.mem_percent is not None else "."))
    best = best_run(runs)
    if best is not None:
        parts.append(f"The lowest final validation loss, {fmt_loss(best.summary.final_val_loss)}, comes from "
                     f"batch {fmt_int(best.batch_size)} (lr {fmt_rate(best.lr)}).")
    diverged = [r for r in ordered if r.diverged]
    if diverged:
        parts.append(f"Diverged: batch {', '.join(fmt_int(r.batch_size) for r in diverged)}.")
    return " ".join(parts)


# ---- generation ------------------------------------------------------------------------------

# A word: letters, with inner apostrophes (don't, Lily's); compared in lower case.
WORD = regex.compile(r"\p{L}+(?:['’]\p{L}+)*")
TEXT_CHUNK_CHARS = 1 << 24


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def words_in_text(wanted: set[str], path: Path) -> set[str]:
    """The words of `wanted` that occur in the text file, reading only until all are found."""
    found: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as text:
        tail = ""
        while (chunk := text.read(TEXT_CHUNK_CHARS)) and found != wanted:
            chunk = tail + chunk
            cut = max(chunk.rfind(" "), chunk.rfind("\n"))  # a word cut at the chunk's end waits for the next
            head, tail = (chunk[:cut], chunk[cut:]) if cut >= 0 else ("", chunk)
            found |= wanted & set(words(head))
        found |= wanted & set(words(tail))
    return found


@dataclass
class KnownWords:
    """How many of the generated words occur in the training text."""

    per_sample: list[float | None]    # share of each sample's words found in the training text
    total: int                        # words in all samples
    known: int                        # of which occur in the training text
    unknown: list[str]                # distinct words not in it, most frequent first

    @property
    def ratio(self) -> float | None:
        return self.known / self.total if self.total else None


def known_words(texts: list[str], train_text: Path) -> KnownWords:
    if not train_text.is_file():
        raise FileNotFoundError(f"--train-text {str(train_text)!r}: file not found")
    generated = [words(t) for t in texts]
    found = words_in_text({w for ws in generated for w in ws}, train_text)
    missing = Counter(w for ws in generated for w in ws if w not in found)
    return KnownWords(
        per_sample=[sum(w in found for w in ws) / len(ws) if ws else None for ws in generated],
        total=sum(map(len, generated)), known=sum(len(ws) for ws in generated) - sum(missing.values()),
        unknown=[w for w, _ in missing.most_common()])


def known_words_text(known: KnownWords, shown: int = 8) -> str:
    if not known.total:
        return "The samples hold no words."
    text = (f"{fmt_share(known.ratio)} of the {fmt_int(known.total)} generated words occur in the "
            f"training text (words: letters with inner apostrophes, compared in lower case)")
    if not known.unknown:
        return text + "."
    listed = ", ".join(repr(w) for w in known.unknown[:shown])
    more = f" and {fmt_int(len(known.unknown) - shown)} more" if len(known.unknown) > shown else ""
    return text + f"; the {fmt_int(len(known.unknown))} distinct words that do not: {listed}{more}."


# ---- architecture variants -------------------------------------------------------------------

def largest_spike(run: Run) -> tuple[float, float] | None:
    """(step, rise): the largest rise of the logged training loss above its lowest value so far."""
    losses = run.metrics[["step", "train_loss"]].dropna()
    if losses.empty:
        return None
    rise = losses["train_loss"] - losses["train_loss"].cummin()
    at = rise.idxmax()
    return float(losses.loc[at, "step"]), float(rise.loc[at])


def stability_text(run: Run) -> str:
    """Why a run that might have diverged did not: its largest loss spike against the trainer's threshold."""
    spike, reference = largest_spike(run), run.summary.divergence_reference_loss
    if run.diverged or spike is None or reference is None:
        return ""
    factor = float(run.config.training.divergence_factor)
    return (f"{run.label} did not diverge: its largest rise of the training loss above its lowest value so far "
            f"is {fmt_signed(spike[1])} (step {fmt_int(spike[0])}), far from the divergence threshold of "
            f"{factor:g}x the untrained model's smoothed loss ({fmt_loss(factor * reference)}).")


def first_logged_loss(run: Run) -> tuple[float, float] | None:
    """(step, training loss) of the first metrics line with a training loss; None when none has."""
    logged = run.metrics.dropna(subset=["train_loss"])
    if logged.empty:
        return None
    return float(logged["step"].iloc[0]), float(logged["train_loss"].iloc[0])


def divergence_text(run: Run, name: str) -> str:
    """"<name> diverged at step N (training loss L, lr R)", saying when the warm-up had not ended: a
    run that blows up while its rate is still a fraction of the configured one says little about
    that rate."""
    point = run.divergence_point()
    if point is None:
        return f"{name} diverged"
    step, loss = point
    logged = run.metrics[run.metrics["step"] <= step]
    lr = float(logged["lr"].iloc[-1]) if "lr" in logged and not logged["lr"].dropna().empty else None
    details = [f"training loss {fmt_loss(loss)}"]
    first = first_logged_loss(run)
    if first is not None and first[0] < step:
        details[0] += f", from {fmt_loss(first[1])} at step {fmt_int(first[0])}"
    if lr is not None:
        warming_up = step < int(run.config.optimizer.warmup_steps)
        details.append(f"lr {fmt_rate(lr)}" + (f", still warming up to {fmt_rate(run.lr)}" if warming_up else ""))
    return f"{name} diverged at step {fmt_int(step)} ({'; '.join(details)})"


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
