"""The README's findings table, written from the committed report (docs/report/).

    .venv/bin/python tools/readme_results.py           # rewrite the table in README.md
    .venv/bin/python tools/readme_results.py --check   # exit 1 when README.md's table is stale

Each row sets a finding of the experiment log beside the numbers of the same section of the report,
with their mean and spread over the report's seeds. Every number comes from the report's CSV files,
so refreshing docs/report and running this keeps the README true; tests/test_readme_results.py
fails when they disagree.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from tinylm.formatting import fmt_bytes
from tinylm.report.tables import fmt_int, fmt_loss, fmt_rate, fmt_ratio, fmt_share, fmt_signed

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- findings table: written by tools/readme_results.py from docs/report; do not edit -->"
END = "<!-- end of the findings table -->"


def _csv(report: Path, section: str, table: str) -> pd.DataFrame:
    return pd.read_csv(report / section / f"{table}.csv")


def _missing(value) -> bool:
    return value is None or pd.isna(value)


def _over_seeds(row: pd.Series, key: str, fmt: Callable = fmt_loss) -> str:
    """A number at the report's seeds: "3.088 ± 0.001 over 2 seeds", or the first seed's alone."""
    seeds = int(row.get("seeds", 1) or 1)
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if seeds < 2 or _missing(mean):
        return fmt(row[key])
    return f"{fmt(mean)} ± {fmt_loss(std)} over {seeds} seeds"


def _against_baseline(row: pd.Series) -> str:
    """The difference to the baseline over seeds, and whether it has one sign at every seed."""
    if row["status"] == "diverged":
        return "diverged"
    seeds = int(row.get("seeds", 1) or 1)
    if seeds >= 2 and _missing(row.get("val_vs_baseline_mean")):
        # Only a run that diverged ends without a final loss: a mean over the others would hide it.
        return f"{fmt_signed(row['val_vs_baseline'])} at the first seed, diverged at another"
    text = _over_seeds(row, "val_vs_baseline", fmt_signed)
    low, high = row.get("val_vs_baseline_min"), row.get("val_vs_baseline_max")
    if seeds < 2 or _missing(low):
        return text
    sign = "above the baseline at every seed" if low > 0 else "below it at every seed" if high < 0 \
        else f"the sign differs between seeds: {fmt_signed(low)} to {fmt_signed(high)}"
    return f"{text}, {sign}"


def _variant(report: Path, section: str) -> str:
    rows = _csv(report, section, "final_losses")
    variant = rows.iloc[1]
    return f"{variant['run']}: {_against_baseline(variant)}"


def _edge(edge: pd.Series) -> str:
    return (f"trains up to {fmt_rate(edge['largest_stable_lr'])}, fails from "
            f"{fmt_rate(edge['smallest_diverging_lr'])} (a bracket of {fmt_ratio(edge['bracket_ratio'])}x)")


def lr_sweep(report: Path) -> str:
    edge = _csv(report, "lr_sweep", "edge_of_stability").iloc[0]
    runs = _csv(report, "lr_sweep", "lr_sweep").set_index("lr")
    best = runs.loc[edge["best_lr"]]
    return (f"best {fmt_rate(edge['best_lr'])} (val {_over_seeds(best, 'final_val_loss')}); {_edge(edge)}: "
            f"the smallest failing rate is {fmt_ratio(edge['ratio'])}x the best ({len(runs)} rates, grid and refined)")


def batch_size(report: Path) -> str:
    rows = _csv(report, "batch_size", "batch_size").sort_values("batch_size")
    first, last = rows.iloc[0], rows.iloc[-1]
    return (f"batches {', '.join(fmt_int(b) for b in rows['batch_size'])} ({fmt_int(last['batch_size'])}: the largest "
            f"whose step fits the probe's memory budget); peak memory {fmt_bytes(first['peak_mem_bytes'])} at batch "
            f"{fmt_int(first['batch_size'])} to {fmt_bytes(last['peak_mem_bytes'])} at {fmt_int(last['batch_size'])}, "
            f"on the CPU")


def generate(report: Path) -> str:
    samples = _csv(report, "generate", "samples")
    return (f"{len(samples)} samples: {fmt_share(samples['known_word_ratio'].mean())} of their words (mean "
            f"over samples) occur in the training text; {int(samples['stopped_at_eot'].sum())} of them end their "
            f"story (the end-of-text token)")


def no_rmsnorm(report: Path) -> str:
    rows = _csv(report, "no_rmsnorm", "final_losses").iloc[1:].sort_values("lr")
    baseline_lr = _csv(report, "no_rmsnorm", "final_losses").iloc[0]["lr"]
    at_baseline = " (the baseline's rate)"
    at_rates = "; ".join(f"{fmt_rate(row['lr'])}{at_baseline if row['lr'] == baseline_lr else ''}: "
                         f"{_against_baseline(row)}" for _, row in rows.iterrows())
    edge = _csv(report, "no_rmsnorm", "edge_of_stability").iloc[0]
    return (f"{at_rates}; without norms it {_edge(edge)}: the smallest failing rate is {fmt_ratio(edge['ratio'])}x "
            f"its own best ({fmt_rate(edge['best_lr'])})")


def owt(report: Path) -> str:
    rows = _csv(report, "owt", "final_losses")
    web, base = rows.iloc[0], rows.iloc[1]
    return (f"train {fmt_loss(web['final_train_loss'])}, val {_over_seeds(web, 'final_val_loss')}, "
            f"against TinyStories' val {_over_seeds(base, 'final_val_loss')}")


# (section, the experiment log's finding as the log states it, this report's numbers)
ROWS: list[tuple[str, str, Callable[[Path], str]]] = [
    ("1. learning rate", "1e-2 diverged, 3e-3 was best (val 1.4316): the edge 3.3x the best rate", lr_sweep),
    ("2. batch size", "128 used 26 GB (25%), 512 used 90 GB (88%) of the GPU", batch_size),
    ("3. generation", "a fluent story (T 0.8, top-p 0.95)", generate),
    ("4. no RMSNorm", "NaN at the best rate; a lower rate (1e-4) trains", no_rmsnorm),
    ("5. post-norm", "about equal to pre-norm", lambda report: _variant(report, "post_norm")),
    ("6. NoPE", "worse than RoPE", lambda report: _variant(report, "nope")),
    ("7. SiLU", "slightly worse than SwiGLU", lambda report: _variant(report, "silu")),
    ("8. OpenWebText", "train 3.914, val 3.933", owt),
]


def findings_table(report: Path) -> str:
    lines = ["| section | the experiment log | this report (val: final validation loss; ± its std over seeds) |",
             "|---|---|---|"]
    lines += [f"| {section} | {log} | {ours(report)} |" for section, log, ours in ROWS]
    return "\n".join(lines)


def with_table(readme: str, table: str) -> str:
    """`readme` with the text between the markers replaced by `table`."""
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md: the markers of the findings table are missing ({BEGIN!r} ... {END!r})")
    head, rest = readme.split(BEGIN, 1)
    return head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "report")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README's table is stale")
    args = parser.parse_args(argv)
    readme = args.readme.read_text()
    updated = with_table(readme, findings_table(args.report))
    if args.check:
        if updated != readme:
            print(f"{args.readme}: the findings table differs from {args.report}; run tools/readme_results.py",
                  file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
