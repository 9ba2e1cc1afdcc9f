"""Findings computed from finished runs, and the sentences that state them.

Every sentence is built from the numbers (formatted as in the tables), never written by hand, so
the text follows the results when the configuration changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tinylm.report.runs import Run
from tinylm.report.tables import (fmt_bytes, fmt_int, fmt_loss, fmt_percent, fmt_rate, fmt_ratio,
                                  fmt_signed, fmt_speed)


def runs_frame(runs: list[Run], baseline: Run | None = None) -> pd.DataFrame:
    """One row per run with every per-run number a section tabulates."""
    rows = []
    reference = baseline.final("final_val_loss") if baseline else None
    for run in runs:
        val = run.final("final_val_loss")
        rows.append({
            "run": run.label,
            "lr": run.lr,
            "batch_size": run.batch_size,
            "status": run.summary.get("status"),
            "diverged": run.diverged,
            "steps": run.summary.get("steps"),
            "params": run.summary.get("params"),
            "final_train_loss": run.final("final_train_loss"),
            "final_val_loss": val,
            "best_val_loss": run.final("best_val_loss"),
            "target_reached_step": run.summary.get("target_reached_step"),
            "tokens_per_s": run.final("tokens_per_s"),
            "peak_mem_bytes": run.final("peak_mem_bytes"),
            "mem_percent": run.final("mem_percent"),
            "val_vs_baseline": None if val is None or reference is None else val - reference,
            "d_ff": run.config["model"].get("d_ff"),
            "vocab_size": run.config["model"].get("vocab_size"),
        })
    return pd.DataFrame(rows).astype(object)  # keep None as None, ints as ints


def best_run(runs: list[Run]) -> Run | None:
    """The non-diverged run with the lowest final validation loss."""
    candidates = [r for r in runs if not r.diverged and r.final("final_val_loss") is not None]
    return min(candidates, key=lambda r: r.final("final_val_loss"), default=None)


# ---- learning rate ---------------------------------------------------------------------------

@dataclass
class EdgeOfStability:
    best: Run | None                  # lowest final validation loss among runs that did not diverge
    smallest_diverging: Run | None
    largest_stable: Run | None

    @property
    def ratio(self) -> float | None:
        """Smallest diverging rate / best rate: how far below the edge the best rate lies."""
        if self.best is None or self.smallest_diverging is None:
            return None
        return self.smallest_diverging.lr / self.best.lr


def edge_of_stability(runs: list[Run]) -> EdgeOfStability:
    diverging = [r for r in runs if r.diverged]
    stable = [r for r in runs if not r.diverged]
    return EdgeOfStability(
        best=best_run(runs),
        smallest_diverging=min(diverging, key=lambda r: r.lr, default=None),
        largest_stable=max(stable, key=lambda r: r.lr, default=None),
    )


def lr_sweep_text(runs: list[Run], edge: EdgeOfStability) -> str:
    rates = sorted(r.lr for r in runs)
    diverged = sorted((r for r in runs if r.diverged), key=lambda r: r.lr)
    parts = [f"The sweep trained {len(runs)} learning rates from {fmt_rate(rates[0])} to {fmt_rate(rates[-1])}; "
             + (f"{len(diverged)} diverged ({', '.join(fmt_rate(r.lr) for r in diverged)})."
                if diverged else "none diverged.")]
    if edge.best is not None:
        parts.append(f"The best rate is {fmt_rate(edge.best.lr)}, with a final validation loss of "
                     f"{fmt_loss(edge.best.final('final_val_loss'))}.")
    if edge.smallest_diverging is not None and edge.best is not None:
        parts.append(f"The smallest diverging rate, {fmt_rate(edge.smallest_diverging.lr)}, is "
                     f"{fmt_ratio(edge.ratio)}x the best rate (the edge of stability).")
        if edge.largest_stable is edge.best:
            parts.append(f"The best rate is also the largest stable rate tried, so the edge lies between "
                         f"{fmt_rate(edge.best.lr)} and {fmt_rate(edge.smallest_diverging.lr)}.")
        elif edge.largest_stable is not None:
            parts.append(f"The largest rate that still trains, {fmt_rate(edge.largest_stable.lr)}, ends at "
                         f"{fmt_loss(edge.largest_stable.final('final_val_loss'))}, above the best.")
    elif edge.smallest_diverging is None and edge.best is not None:
        parts.append(f"The edge of stability lies above the largest rate tried, {fmt_rate(rates[-1])}.")
    else:
        parts.append(f"Every rate diverged: the edge of stability lies below {fmt_rate(rates[0])}.")
    parts.append(target_text(runs))
    return " ".join(p for p in parts if p)


def target_text(runs: list[Run]) -> str:
    targets = {r.final("early_stop_loss") for r in runs} - {None}
    if len(targets) != 1:
        return ""
    target = targets.pop()
    reached = sorted((r for r in runs if r.summary.get("target_reached_step") is not None),
                     key=lambda r: r.summary["target_reached_step"])
    if not reached:
        return f"No run reached the target validation loss of {fmt_loss(target)}."
    first = reached[0]
    return (f"{len(reached)} of {len(runs)} runs reached the target validation loss of {fmt_loss(target)}; "
            f"{first.label} first, at step {fmt_int(first.summary['target_reached_step'])}.")


# ---- batch size ------------------------------------------------------------------------------

def token_budget(run: Run) -> int:
    """Training tokens the run was configured for (steps x batch x context, or max_tokens)."""
    training, context = run.config["training"], run.config["model"]["context_length"]
    if training.get("max_tokens"):
        return int(training["max_tokens"])
    return int(training["max_steps"]) * run.batch_size * context


def batch_size_text(runs: list[Run], max_batch: dict | None) -> str:
    ordered = sorted(runs, key=lambda r: r.batch_size)
    budgets = sorted({token_budget(r) for r in ordered})
    budget = (f"the same budget of {fmt_int(budgets[0])} tokens" if len(budgets) == 1
              else f"budgets of {fmt_int(budgets[0])} to {fmt_int(budgets[-1])} tokens")
    parts = [f"Batch sizes {', '.join(fmt_int(r.batch_size) for r in ordered)} trained on {budget}, each at its "
             f"configured learning rate."]
    if max_batch:
        limit = max_batch.get("memory_budget_bytes")
        parts.append("The largest batch whose training step fits "
                     + (f"the {fmt_bytes(limit)} memory budget" if limit else "the device memory")
                     + f" on {max_batch.get('device', 'the device')} is {fmt_int(max_batch.get('largest_batch'))}.")
    fastest = max((r for r in runs if r.final("tokens_per_s") is not None),
                  key=lambda r: r.final("tokens_per_s"), default=None)
    if fastest is not None:
        parts.append(f"Throughput peaks at batch {fmt_int(fastest.batch_size)} with "
                     f"{fmt_speed(fastest.final('tokens_per_s'))} tokens/s.")
    with_memory = [r for r in ordered if r.final("peak_mem_bytes") is not None]
    if len(with_memory) >= 2:
        small, large = with_memory[0], with_memory[-1]
        parts.append(f"Peak memory is {fmt_bytes(small.final('peak_mem_bytes'))} at batch "
                     f"{fmt_int(small.batch_size)} and {fmt_bytes(large.final('peak_mem_bytes'))} at batch "
                     f"{fmt_int(large.batch_size)}"
                     + (f" ({fmt_percent(large.final('mem_percent'))} of device memory)."
                        if large.final("mem_percent") is not None else "."))
    best = best_run(runs)
    if best is not None:
        parts.append(f"The lowest final validation loss, {fmt_loss(best.final('final_val_loss'))}, comes from "
                     f"batch {fmt_int(best.batch_size)} (lr {fmt_rate(best.lr)}).")
    diverged = [r for r in ordered if r.diverged]
    if diverged:
        parts.append(f"Diverged: batch {', '.join(fmt_int(r.batch_size) for r in diverged)}.")
    return " ".join(parts)


# ---- architecture variants -------------------------------------------------------------------

def variant_text(runs: list[Run], baseline: Run) -> str:
    base_val = baseline.final("final_val_loss")
    named = "" if baseline.label == "baseline" else f" {baseline.label}"
    parts = [f"The baseline{named} (lr {fmt_rate(baseline.lr)}) ends at a final validation loss of {fmt_loss(base_val)}"
             + (" (it diverged)." if baseline.diverged else ".")]
    for run in runs:
        if run is baseline:
            continue
        if run.diverged:
            point = run.divergence_point()
            where = f" at step {fmt_int(point[0])}" if point else ""
            parts.append(f"{run.label} diverged{where}.")
            continue
        val = run.final("final_val_loss")
        if val is None or base_val is None:
            parts.append(f"{run.label} ends at {fmt_loss(val)}.")
            continue
        difference = val - base_val
        verdict = "worse than" if difference > 0 else "better than" if difference < 0 else "equal to"
        parts.append(f"{run.label} ends at {fmt_loss(val)}, {fmt_signed(difference)} ({verdict} the baseline).")
    params = {r.label: r.summary.get("params") for r in runs}
    if len(set(params.values())) == 1 and None not in params.values():
        parts.append(f"Every run has {fmt_int(runs[0].summary['params'])} parameters.")
    elif len(set(params.values()) - {None}) > 1:
        parts.append("Parameter counts: " + ", ".join(f"{label} {fmt_int(n)}" for label, n in params.items()) + ".")
    return " ".join(parts)


def comparison_text(run: Run, other: Run) -> str:
    """The OpenWebText run against the TinyStories run of the same architecture and step count."""
    val, other_val = run.final("final_val_loss"), other.final("final_val_loss")
    text = (f"{run.label} reaches a final train loss of {fmt_loss(run.final('final_train_loss'))} and a final "
            f"validation loss of {fmt_loss(val)} after {fmt_int(run.summary.get('steps'))} steps; "
            f"{other.label} reaches {fmt_loss(other_val)} on its own validation set")
    if val is not None and other_val is not None:
        text += f" ({fmt_signed(val - other_val)} for {run.label})"
    vocabularies = " and ".join(fmt_int(r.config["model"]["vocab_size"]) for r in (run, other))
    params = " and ".join(fmt_int(r.summary.get("params")) for r in (run, other))
    return text + (f". The two use different texts and tokenizers ({vocabularies} tokens, so {params} parameters): "
                   "the gap measures how much harder the data is for the same architecture and budget, not a "
                   "like-for-like perplexity.")
