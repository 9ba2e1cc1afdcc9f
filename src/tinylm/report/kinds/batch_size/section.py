"""The batch-size section: memory and throughput per batch size against the max-batch probe,
loss curves on one token budget, and the best batch."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from tinylm.report import figures
from tinylm.report.findings import best_run, runs_frame, seed_columns
from tinylm.report.runs import Run, colour_by_order
from tinylm.report.section import Inputs, Section
from tinylm.report.seeds import same_at_every_seed, table_note
from tinylm.report.tables import Column, fmt_bytes, fmt_int, fmt_loss, fmt_percent, fmt_rate, fmt_speed
from tinylm.training.summary import SUMMARY


def best_batch(runs: list[Run]) -> int | None:
    """The batch size of the best run; None when every one diverged."""
    best = best_run(runs)
    return None if best is None else best.batch_size


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
    fastest = max(((speed, r) for r in runs if (speed := r.summary.tokens_per_s) is not None),
                  key=lambda pair: pair[0], default=None)
    if fastest is not None:
        parts.append(f"Throughput peaks at batch {fmt_int(fastest[1].batch_size)} with "
                     f"{fmt_speed(fastest[0])} tokens/s.")
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
    parts.append(same_at_every_seed(runs, best_batch, lambda batch: (
        "no batch size trains" if batch is None else f"the lowest final loss comes from batch {fmt_int(batch)}")))
    diverged = [r for r in ordered if r.diverged]
    if diverged:
        parts.append(f"Diverged: batch {', '.join(fmt_int(r.batch_size) for r in diverged)}.")
    return " ".join(part for part in parts if part)


# ---- figure

def memory_and_speed(runs: list[Run], probe: dict | None) -> plt.Figure:
    """Peak memory (MiB and % of device memory) and throughput per batch size; further seeds as
    small dots."""
    fig, (ax_mem, ax_speed) = plt.subplots(1, 2, figsize=figures.WIDE, layout="constrained")
    ordered = sorted(runs, key=lambda r: r.batch_size)
    total = (probe or {}).get("total_memory") or next(
        (r.summary.mem_total_bytes for r in ordered if r.summary.mem_total_bytes), None)
    mib = 2.0 ** 20
    if probe and probe.get("tried"):
        tried = sorted(probe["tried"], key=lambda t: t["batch"])
        fits = [t for t in tried if t.get("fits")]
        too_big = [t for t in tried if not t.get("fits") and t.get("peak_bytes")]
        ax_mem.plot([t["batch"] for t in fits], [t["peak_bytes"] / mib for t in fits], color="0.5",
                    marker="s", markersize=4, linewidth=1, label="max-batch probe (one step): fits")
        if too_big:
            ax_mem.plot([t["batch"] for t in too_big], [t["peak_bytes"] / mib for t in too_big],
                        color="0.5", marker="x", markersize=7, linestyle="none",
                        label="max-batch probe (one step): too large")
        budget = probe.get("memory_budget_bytes")
        if budget:  # a line when it fits the scale of the measurements, else only its value
            shown = [t["peak_bytes"] for t in tried if t.get("peak_bytes")] + [
                r.summary.peak_mem_bytes or 0 for r in ordered]
            on_scale = budget <= 3 * max(shown, default=0)
            ax_mem.axhline(budget / mib if on_scale else np.nan, color="#d62728", linestyle=":", linewidth=1,
                           label=f"memory budget ({budget / mib:,.0f} MiB{'' if on_scale else ', off the scale'})")
    labelled = False
    for run in ordered:  # the x axis names the batch, so one legend entry covers every run
        peak = run.summary.peak_mem_bytes
        if peak is not None:
            ax_mem.plot([run.batch_size], [peak / mib], marker="o", markersize=7, linestyle="none",
                        color=run.colour, label=None if labelled else "training run (peak)")
            labelled = True
        speed = run.summary.tokens_per_s
        if speed is not None:
            ax_speed.bar(str(run.batch_size), speed, color=run.colour, label=run.legend)
        for replica in run.replicas:
            if replica.summary.peak_mem_bytes is not None:
                ax_mem.plot([run.batch_size], [replica.summary.peak_mem_bytes / mib], marker=".", markersize=4,
                            linestyle="none", color="0.2")
            if replica.summary.tokens_per_s is not None:
                ax_speed.plot([str(run.batch_size)], [replica.summary.tokens_per_s], marker=".", markersize=6,
                              linestyle="none", color="0.2")
    ax_mem.set_xscale("log", base=2)
    ax_mem.set_xlabel("batch size (sequences, log scale)")
    ax_mem.set_ylabel("peak memory (MiB)")
    ax_mem.set_title("Memory per batch size")
    if total:
        percent = ax_mem.secondary_yaxis("right", functions=(lambda m: m * mib / total * 100,
                                                            lambda p: p / 100 * total / mib))
        percent.set_ylabel("% of device memory")
    ax_mem.legend(loc="best")
    ax_speed.set_xlabel("batch size (sequences)")
    ax_speed.set_ylabel("throughput (tokens/s)")
    ax_speed.set_title("Training throughput")
    return fig


def build(section: Section, inputs: Inputs) -> None:
    runs = sorted(inputs.runs, key=lambda r: r.batch_size)
    # Small to large batch: dark to light. The baseline, when it is one of them, keeps its colour
    # (it appears in other sections) and its dashes.
    colour_by_order([r for r in runs if r is not inputs.baseline])
    section.paragraph(batch_size_text(runs, inputs.max_batch))
    seeds = " (dots: further seeds)" if any(r.replicas for r in runs) else ""
    section.figure(memory_and_speed(runs, inputs.max_batch), "memory",
                   f"Peak memory (MiB and % of device memory) and throughput per batch size{seeds}")
    section.curves(runs, inputs.baseline, "Batch sizes")
    spread, csv_only = seed_columns(runs)
    section.table(runs_frame(runs), [
        Column("run", "run"), Column("batch_size", "batch", fmt_int), Column("lr", "learning rate", fmt_rate),
        Column(SUMMARY.peak_mem_bytes, "peak memory", fmt_bytes),
        Column(SUMMARY.mem_percent, "% of device memory", fmt_percent),
        Column(SUMMARY.tokens_per_s, "tokens/s", fmt_speed), Column(SUMMARY.final_val_loss, "final val loss", fmt_loss),
        Column(SUMMARY.status, "status"), *spread,
    ], "batch_size", f"Batch sizes at a fixed token budget{table_note(runs)}", csv_only)
